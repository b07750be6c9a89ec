"""The ObjectStore protocol that the API and the workers program against."""

from datetime import datetime
from typing import Protocol, runtime_checkable

# SigV4 presigned URLs live at most 7 days; the local store keeps the same limit so both behave alike.
MAX_PRESIGN_TTL_S = 7 * 24 * 3600


@runtime_checkable
class ObjectStore(Protocol):
    """A bucket of immutable-by-convention objects addressed by slash-separated keys.

    Keys follow ``storage.keys.validate_key`` (an invalid one raises ``InvalidKey``, a ValueError).
    Every failure is a ``StoreError``: ``ObjectNotFound`` for a missing key, ``StoreUnavailable``
    for an unreachable store or a transient error (worth a retry).
    """

    def ensure_bucket(self) -> None:
        """Create the bucket (or folder) if it is missing; safe to call concurrently and repeatedly."""
        ...

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key``, replacing any object there; readers never see a partial object."""
        ...

    def get(self, key: str) -> bytes:
        """The bytes stored under ``key``; raises ObjectNotFound."""
        ...

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with ``prefix`` (non-empty); return how many."""
        ...

    def list_keys(self, prefix: str, *, modified_before: datetime, limit: int) -> list[str]:
        """Up to ``limit`` keys under ``prefix`` (non-empty) whose object was last written before
        ``modified_before`` (timezone-aware)."""
        ...

    def presigned_url(self, key: str, ttl_s: int) -> str:
        """A URL that lets anyone holding it GET the object for ``ttl_s`` seconds."""
        ...

    def ping(self) -> None:
        """Return if the store is reachable and its bucket exists; else raise StoreUnavailable."""
        ...


def validate_ttl(ttl_s: int) -> int:
    """Return ``ttl_s`` if it is a whole number of seconds in 1..MAX_PRESIGN_TTL_S; else raise ValueError."""
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or not 1 <= ttl_s <= MAX_PRESIGN_TTL_S:
        raise ValueError(f"ttl_s must be an int in 1..{MAX_PRESIGN_TTL_S} (7 days), got {ttl_s!r}")
    return ttl_s
