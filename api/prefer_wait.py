"""``Prefer: wait=N`` (RFC 7240): hold a submission's answer until its job ends, or N seconds pass."""

import time
import uuid
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy.orm import Session

from core.errors import InvalidInput
from core.live_events import stream_key
from core.redis_client import get_redis
from core.statuses import JobStatus
from db import jobs as job_queries
from db.models import Job

MAX_WAIT_S = 60


def parse_prefer_wait(prefer: str | None) -> float:
    """Seconds asked for by ``Prefer: wait=N``, 0 when absent; more than 60 is a 422."""
    if not prefer:
        return 0.0
    for token in prefer.split(","):
        name, _, value = token.strip().partition("=")
        if name.strip().lower() != "wait":
            continue
        try:
            seconds = float(value.strip().strip('"'))
        except ValueError:
            raise InvalidInput(f"Prefer: wait must be a number of seconds, got {value!r}", field="Prefer") from None
        if not 0 <= seconds <= MAX_WAIT_S:
            raise InvalidInput(f"Prefer: wait must be between 0 and {MAX_WAIT_S} seconds, got {value}", field="Prefer")
        return seconds
    return 0.0


def wait_for_job(session: Session, job: Job, timeout_s: float) -> Job:
    """Hold until the job ends or ``timeout_s`` passes, following its event stream; the job as it is then.

    The session's transaction ends first and between looks at the row, so a waiting client holds no pooled
    database connection (the wait can last a minute, and many clients may wait at once).
    """
    job_id = job.id
    session.rollback()
    deadline = time.monotonic() + timeout_s
    last_id = "0-0"
    redis_client = get_redis()
    while (remaining := deadline - time.monotonic()) > 0:
        replies: Any
        try:
            replies = redis_client.xread({stream_key(job_id): last_id}, block=max(1, int(remaining * 1000)), count=50)
        except RedisError:
            time.sleep(min(0.2, remaining))  # no live stream: the row below still tells
            replies = []
        for _stream, entries in replies:
            for entry_id, fields in entries:
                last_id = entry_id
                if fields.get(b"event") == b"done":
                    return _reloaded(session, job_id)
        if not replies and _has_ended(session, job_id):
            break
    return _reloaded(session, job_id)


def _has_ended(session: Session, job_id: uuid.UUID) -> bool:
    try:
        job = job_queries.get_job(session, job_id=job_id)
        return job is None or JobStatus(job.status).is_terminal
    finally:
        session.rollback()  # the connection goes back to the pool while the wait goes on


def _reloaded(session: Session, job_id: uuid.UUID) -> Job:
    session.rollback()  # a fresh snapshot: the worker committed in another transaction
    fresh = job_queries.get_job(session, job_id=job_id)
    assert fresh is not None
    return fresh
