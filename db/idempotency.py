"""Idempotency keys: which job a tenant's keyed request created. The caller owns the transaction."""

import uuid
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.jobs import now
from db.models import IdempotencyKey

IDEMPOTENCY_KEY_TTL = timedelta(days=7)


def find_idempotency_key(session: Session, *, tenant_id: uuid.UUID, key: str) -> IdempotencyKey | None:
    """The tenant's record of ``key``, or None."""
    query = select(IdempotencyKey).where(IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key)
    return session.scalar(query)


def remember_idempotency_key(
    session: Session, *, tenant_id: uuid.UUID, key: str, request_hash: str, job_id: uuid.UUID
) -> bool:
    """Record ``key`` with the job it created; False (rolled back) when a concurrent request with the same key
    won the race."""
    session.add(IdempotencyKey(tenant_id=tenant_id, key=key, request_hash=request_hash, job_id=job_id))
    try:
        # The unique index makes a concurrent insert of the same key wait here for the other transaction.
        session.flush()
    except IntegrityError:
        session.rollback()
        return False
    return True


def forget_idempotency_keys(session: Session) -> int:
    """Drop Idempotency-Keys older than their retention (7 days; the contract promises at least 24 h)."""
    result = session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < now() - IDEMPOTENCY_KEY_TTL))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
