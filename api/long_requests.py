"""Caps on the requests that hold the API a long time: ``Prefer: wait``, event streams and searches.

Each tenant may hold a bounded number of each at once, counted in Redis so every API replica shares the
count: a sorted set per (kind, tenant) of slot tokens scored by their expiry, so the slot of a replica
that died frees itself. Waits also have a cap per process, since each one holds one of the process's
worker threads whatever tenant it serves.

With Redis unreachable the per-tenant caps are not enforced (as the rate limits): refusing every long
request would turn a Redis outage into an API outage.
"""

import logging
import secrets
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from redis.commands.core import Script
from redis.exceptions import RedisError

from core.redis_client import get_redis

log = logging.getLogger(__name__)

Kind = Literal["wait", "stream", "search"]

# Removes expired slots, then takes one if fewer than the cap are held; Redis' clock, shared by all replicas.
_TAKE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""
# Pushes a held slot's expiry out; 0 if it was no longer held (it expired, or Redis restarted empty).
_RENEW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local renewed = redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[1]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
return renewed
"""


@dataclass(frozen=True)
class Slot:
    """One held slot: its set's key and its token. ``counted`` is False when Redis could not count it."""

    key: str
    token: str
    counted: bool = True


def slot_key(kind: Kind, tenant_id: uuid.UUID) -> str:
    """The Redis key of a tenant's slots of one kind."""
    return f"imagen:slots:{kind}:{tenant_id}"


@lru_cache
def _take_script() -> Script:
    return get_redis().register_script(_TAKE)


@lru_cache
def _renew_script() -> Script:
    return get_redis().register_script(_RENEW)


def take_slot(kind: Kind, tenant_id: uuid.UUID, *, limit: int, ttl_s: float) -> Slot | None:
    """A slot of ``kind`` for the tenant, held for ``ttl_s`` unless renewed; None when ``limit`` are held.

    ``limit`` <= 0 is unlimited. Release the slot with ``release_slot`` when the request ends.
    """
    key = slot_key(kind, tenant_id)
    token = secrets.token_hex(8)
    if limit <= 0:
        return Slot(key, token, counted=False)
    try:
        taken = _take_script()(keys=[key], args=[limit, int(ttl_s * 1000), token])
    except RedisError as exc:
        log.warning("%s slots not counted: Redis is unreachable (%s)", kind, exc)
        return Slot(key, token, counted=False)
    return Slot(key, token) if taken else None


def renew_slot(slot: Slot, *, ttl_s: float) -> None:
    """Hold ``slot`` ``ttl_s`` longer (a long stream calls it as it goes); a Redis error leaves it to expire."""
    if not slot.counted:
        return
    try:
        _renew_script()(keys=[slot.key], args=[int(ttl_s * 1000), slot.token])
    except RedisError as exc:
        log.warning("could not renew a slot in %s: %s", slot.key, exc)


def release_slot(slot: Slot) -> None:
    """Give ``slot`` back; if Redis cannot be reached it expires by itself."""
    if not slot.counted:
        return
    try:
        get_redis().zrem(slot.key, slot.token)
    except RedisError as exc:
        log.warning("could not release a slot in %s: %s", slot.key, exc)


class ProcessWaits:
    """How many ``Prefer: wait`` holds this process serves at once: each takes a worker thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.held = 0

    @contextmanager
    def hold(self, limit: int) -> Iterator[bool]:
        """True (and counted until the block ends) if fewer than ``limit`` waits are held; <= 0: unlimited."""
        with self._lock:
            granted = limit <= 0 or self.held < limit
            if granted:
                self.held += 1
        try:
            yield granted
        finally:
            if granted:
                with self._lock:
                    self.held -= 1


PROCESS_WAITS = ProcessWaits()


@contextmanager
def wait_slot(tenant_id: uuid.UUID, *, per_tenant: int, per_process: int, timeout_s: float) -> Iterator[bool]:
    """Whether a ``Prefer: wait`` of ``timeout_s`` may hold its answer: True if the tenant and the process
    are both under their caps (the slot is held until the block ends). Over a cap the request is answered
    at once, as if it had not asked to wait: RFC 7240 lets a server ignore a preference."""
    with PROCESS_WAITS.hold(per_process) as granted:
        if not granted:
            yield False
            return
        # The slot outlives the wait by a margin, so a slow answer after the wait is still counted.
        slot = take_slot("wait", tenant_id, limit=per_tenant, ttl_s=timeout_s + 30)
        if slot is None:
            yield False
            return
        try:
            yield True
        finally:
            release_slot(slot)
