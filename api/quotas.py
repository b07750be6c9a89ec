"""Per-tenant limits: requests per minute (in Redis, shared by every API replica) and jobs in flight."""

import logging
import math
import time
import uuid
from functools import lru_cache
from typing import TYPE_CHECKING

from redis.commands.core import Script
from redis.exceptions import RedisError
from sqlalchemy.orm import Session

from core.config import Settings
from core.errors import InvalidInput, QuotaExceeded, RateLimited
from core.redis_client import get_redis
from db import jobs as job_queries
from db import tenants
from db.models import Tenant

if TYPE_CHECKING:
    from api.callers import TenantLimits

log = logging.getLogger(__name__)

_MINUTE_US = 60_000_000
# A job's end cannot be foreseen: this is how often a client over its jobs-in-flight quota should ask again.
IN_FLIGHT_RETRY_AFTER_S = 5
# With Redis unreachable, requests go unlimited; it is tried again after this long, not on every request.
_REDIS_RETRY_S = 10.0

# GCRA (the generic cell rate algorithm), atomic in one script. The tenant's key holds the theoretical
# arrival time (TAT) of its next request, in microseconds of the Redis server's clock, the one clock all
# replicas share. Each request moves the TAT one emission interval (a minute / the limit) later; one
# that would take it more than a minute past now is refused and changes nothing, so a whole minute's
# allowance may come in a burst, and a refused request passes exactly when TAT - minute reaches now:
# that wait is what the script returns (0: allowed).
_GCRA = """
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local wait = new_tat - window - now
if wait > 0 then return wait end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return 0
"""

_redis_skipped_until = 0.0


def effective_limit(own: int | None, default: int) -> int:
    """The tenant's own value, else the deployment's default; <= 0 means unlimited."""
    return default if own is None else own


def rate_key(tenant_id: uuid.UUID) -> str:
    """The Redis key of a tenant's request-rate state."""
    return f"imagen:ratelimit:{tenant_id}"


@lru_cache
def _gcra() -> Script:
    return get_redis().register_script(_GCRA)


def enforce_rate_limit(tenant: "Tenant | TenantLimits", *, settings: Settings) -> None:
    """Count one request of the tenant; RateLimited if its requests per minute are used up.

    If Redis cannot be reached the request goes through: a limiter that refused everything would turn a
    Redis outage into an API outage.
    """
    limit = effective_limit(tenant.requests_per_minute, settings.default_requests_per_minute)
    retry_after_s = _take(rate_key(tenant.id), limit)
    if retry_after_s:
        raise RateLimited(
            f"rate limit reached: requests_per_minute is {limit} for this tenant; retry in {retry_after_s} s",
            retry_after_s=retry_after_s,
        )


def enforce_sign_in_rate(address: str, *, settings: Settings) -> None:
    """Count one dashboard sign-in attempt from ``address``; RateLimited past the allowance, so admin keys
    cannot be guessed at speed."""
    limit = settings.admin_sign_ins_per_minute
    retry_after_s = _take(f"imagen:sign-in:{address}", limit)
    if retry_after_s:
        raise RateLimited(
            f"too many sign-in attempts from this address: at most {limit} a minute; retry in {retry_after_s} s",
            retry_after_s=retry_after_s,
        )


def _take(key: str, per_minute: int) -> int:
    """Take one of ``per_minute`` from the allowance kept under ``key``: 0 if there was one, else the seconds
    until there is. Unlimited (<= 0), or Redis unreachable: always 0."""
    global _redis_skipped_until
    if per_minute <= 0 or time.monotonic() < _redis_skipped_until:
        return 0
    try:
        # The interval rounds down, so that `per_minute` requests always fit in a minute.
        wait_us = int(_gcra()(keys=[key], args=[max(1, _MINUTE_US // per_minute), _MINUTE_US]))
    except RedisError as exc:
        _redis_skipped_until = time.monotonic() + _REDIS_RETRY_S
        log.warning("rate limits not enforced for %.0f s: Redis is unreachable (%s)", _REDIS_RETRY_S, exc)
        return 0
    return max(1, math.ceil(wait_us / 1_000_000)) if wait_us > 0 else 0


def check_priority(priority: int, *, tenant: "Tenant | TenantLimits", settings: Settings) -> None:
    """InvalidInput (a 422 naming ``priority``) if ``priority`` is above the tenant's ceiling."""
    ceiling = settings.default_max_priority if tenant.max_priority is None else tenant.max_priority
    if priority > ceiling:
        raise InvalidInput(
            f"priority must be at most {ceiling} for this tenant (its max_priority), got {priority}", field="priority"
        )


def check_jobs_in_flight(session: Session, *, tenant: "Tenant | TenantLimits", settings: Settings) -> None:
    """QuotaExceeded if the job just added (flushed, not committed) puts the tenant over its jobs in flight.

    Takes a lock on the tenant row that lasts until the caller's transaction ends: a tenant's concurrent
    submissions take turns from here to their commit, so two of them cannot both take the last slot.
    """
    limit = effective_limit(tenant.max_jobs_in_flight, settings.default_max_jobs_in_flight)
    if limit <= 0:
        return
    tenants.lock_tenant(session, tenant_id=tenant.id)
    others = job_queries.count_in_flight(session, tenant_id=tenant.id) - 1
    if others >= limit:
        raise QuotaExceeded(
            f"quota reached: max_jobs_in_flight is {limit} for this tenant and {others} of its jobs are "
            "queued or running; submit again when one ends",
            retry_after_s=IN_FLIGHT_RETRY_AFTER_S,
        )
