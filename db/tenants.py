"""Queries on tenants and API keys. The caller owns the transaction."""

import base64
import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import ApiKey, Tenant

KEY_PREFIX = "iq_"


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


def has_admin_key(session: Session) -> bool:
    """Whether any live admin key exists (the embedded mode creates one on first start)."""
    return (
        session.scalar(select(ApiKey.id).where(ApiKey.is_admin.is_(True), ApiKey.revoked_at.is_(None)).limit(1))
        is not None
    )
