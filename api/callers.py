"""Who is calling: an API key resolved to its tenant and limits, kept in memory for a few seconds.

Every /v1 request names its key, and looking it up in Postgres was one round trip of the few a poll makes.
An entry lives ``IMAGEN_API_KEY_CACHE_S`` seconds (5 by default) and is never renewed by use, so a revoked key,
or a changed quota, takes effect in every API process within that bound; the process that revokes a key
through the dashboard forgets it at once.
"""

import threading
import time
import uuid
from dataclasses import dataclass

from db import tenants
from db.session import session_scope

# Enough for every live key of a large deployment; past it the oldest entry goes first.
_MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class TenantLimits:
    """A tenant's own quotas (None: the deployment's default), as of when its key was looked up."""

    id: uuid.UUID
    requests_per_minute: int | None
    max_jobs_in_flight: int | None
    max_priority: int | None


@dataclass(frozen=True)
class Caller:
    """The live API key a request came with, and its tenant."""

    key_id: uuid.UUID
    tenant_id: uuid.UUID
    is_admin: bool
    tenant: TenantLimits


class CallerCache:
    """Key hash -> Caller, each entry kept ``ttl_s`` seconds from when it was read from the database."""

    def __init__(self, max_entries: int = _MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, Caller]] = {}
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> Caller | None:
        entry = self._entries.get(key_hash)
        if entry is None or entry[0] <= time.monotonic():
            return None
        return entry[1]

    def put(self, key_hash: str, caller: Caller, ttl_s: float) -> None:
        with self._lock:
            self._entries.pop(key_hash, None)
            while len(self._entries) >= self.max_entries:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key_hash] = (time.monotonic() + ttl_s, caller)

    def forget(self, key_hash: str) -> None:
        with self._lock:
            self._entries.pop(key_hash, None)


_cache = CallerCache()


def find_caller(key: str, *, ttl_s: float) -> Caller | None:
    """The caller whose live API key is ``key``, from memory if read less than ``ttl_s`` seconds ago; None if
    the key is unknown or revoked (never cached: a key created a moment ago works at once)."""
    key_hash = tenants.hash_key(key)
    caller = _cache.get(key_hash) if ttl_s > 0 else None
    if caller is not None:
        return caller
    with session_scope() as session:
        row = tenants.find_api_key(session, key=key)
        if row is None:
            return None
        tenant = row.tenant
        limits = TenantLimits(tenant.id, tenant.requests_per_minute, tenant.max_jobs_in_flight, tenant.max_priority)
        caller = Caller(key_id=row.id, tenant_id=row.tenant_id, is_admin=row.is_admin, tenant=limits)
    if ttl_s > 0:
        _cache.put(key_hash, caller, ttl_s)
    return caller


def forget_key(key_hash: str) -> None:
    """Drop a key from this process's cache (it was just revoked here)."""
    _cache.forget(key_hash)
