"""The process-wide Redis client (cancellation cache, broker liveness, readiness)."""

from functools import lru_cache

import redis

from core.config import get_settings


@lru_cache
def get_redis() -> redis.Redis:
    """A pooled client for ``IMAGEN_REDIS_URL``; it fails fast when Redis is down."""
    return redis.Redis.from_url(client_url(get_settings().redis_url), socket_connect_timeout=2, socket_timeout=5)


def client_url(broker_url: str) -> str:
    """redis-py's spelling of a broker URL: Celery writes a unix socket as ``redis+socket://``."""
    if broker_url.startswith("redis+socket://"):
        return "unix://" + broker_url.removeprefix("redis+socket://")
    return broker_url


def cancel_key(job_id: object) -> str:
    """The Redis key that mirrors a job's cancel flag, so denoising callbacks can poll it cheaply."""
    return f"imagen:cancel:{job_id}"
