"""Queries on tenants and API keys. The caller owns the transaction."""

import base64
import enum
import hashlib
import secrets
import uuid
from datetime import UTC, datetime
from typing import Final

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from db.jobs import ACTIVE
from db.models import ApiKey, Job, Tenant

KEY_PREFIX = "iq_"


class Unset(enum.Enum):
    """A keyword argument left out (where None means something: back to the default)."""

    TOKEN = 0


UNSET: Final = Unset.TOKEN


def hash_key(key: str) -> str:
    """The stored form of an API key (keys are 256-bit random, so a plain SHA-256 is enough)."""
    return hashlib.sha256(key.encode()).hexdigest()


def _new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def get_or_create_tenant(session: Session, *, name: str) -> Tenant:
    """The tenant called ``name``, created if it does not exist yet."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name, webhook_secret=_new_webhook_secret())
        session.add(tenant)
        session.flush()
    return tenant


def create_api_key(
    session: Session, *, tenant: Tenant, is_admin: bool = False, key: str | None = None
) -> tuple[ApiKey, str]:
    """A new key for ``tenant``; returns the row and the key itself, which is never stored."""
    key = key or KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(tenant_id=tenant.id, key_hash=hash_key(key), prefix=key[:10], is_admin=is_admin)
    session.add(row)
    session.flush()
    return row, key


def find_api_key(session: Session, *, key: str) -> ApiKey | None:
    """The live (not revoked) API key row for ``key``, with its tenant."""
    return session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None)))


def api_key_is_live(session: Session, *, key_id: uuid.UUID) -> bool:
    """Whether the key still exists and is not revoked."""
    query = select(ApiKey.id).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
    return session.scalar(query) is not None


def has_admin_key(session: Session) -> bool:
    """Whether any live admin key exists (the embedded mode creates one on first start)."""
    return (
        session.scalar(select(ApiKey.id).where(ApiKey.is_admin.is_(True), ApiKey.revoked_at.is_(None)).limit(1))
        is not None
    )


def get_tenant(session: Session, *, name: str) -> Tenant | None:
    """The tenant called ``name``, or None."""
    return session.scalar(select(Tenant).where(Tenant.name == name))


def lock_tenant(session: Session, *, tenant_id: uuid.UUID) -> None:
    """Serialize with the other transactions that lock this tenant, until this one ends.

    ``FOR NO KEY UPDATE`` does not block the foreign-key checks of rows that point at the tenant.
    """
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update(key_share=True))


def list_tenants(session: Session) -> list[tuple[Tenant, int]]:
    """Every tenant by name, with how many of its jobs are queued or running."""
    in_flight = (
        select(Job.tenant_id, func.count().label("n")).where(Job.status.in_(ACTIVE)).group_by(Job.tenant_id).subquery()
    )
    rows = session.execute(
        select(Tenant, func.coalesce(in_flight.c.n, 0))
        .outerjoin(in_flight, in_flight.c.tenant_id == Tenant.id)
        .order_by(Tenant.name)
    )
    return [(tenant, int(n)) for tenant, n in rows.tuples()]


def set_quota(
    session: Session,
    *,
    tenant: Tenant,
    requests_per_minute: int | Unset | None = UNSET,
    max_jobs_in_flight: int | Unset | None = UNSET,
    max_priority: int | Unset | None = UNSET,
) -> None:
    """Change the tenant's limits: None is the deployment's default, UNSET leaves one as is; a rate or an
    in-flight quota <= 0 is unlimited, a priority ceiling is 0..9."""
    if not isinstance(requests_per_minute, Unset):
        tenant.requests_per_minute = requests_per_minute
    if not isinstance(max_jobs_in_flight, Unset):
        tenant.max_jobs_in_flight = max_jobs_in_flight
    if not isinstance(max_priority, Unset):
        tenant.max_priority = max_priority
    session.flush()


def list_api_keys(session: Session, *, tenant_name: str | None = None) -> list[ApiKey]:
    """API keys (revoked ones included), by tenant and then oldest first."""
    query = select(ApiKey).join(Tenant, Tenant.id == ApiKey.tenant_id).order_by(Tenant.name, ApiKey.created_at)
    if tenant_name is not None:
        query = query.where(Tenant.name == tenant_name)
    return list(session.scalars(query))


def find_live_api_keys(session: Session, *, key_or_prefix: str) -> list[ApiKey]:
    """The live keys that are ``key_or_prefix`` itself or whose shown prefix it is."""
    return list(
        session.scalars(
            select(ApiKey)
            .where(or_(ApiKey.key_hash == hash_key(key_or_prefix), ApiKey.prefix == key_or_prefix))
            .where(ApiKey.revoked_at.is_(None))
            .order_by(ApiKey.created_at)
        )
    )


def revoke_api_key(session: Session, *, key: ApiKey) -> None:
    """Revoke the key: from now on it fails authentication."""
    key.revoked_at = datetime.now(UTC)
    session.flush()
