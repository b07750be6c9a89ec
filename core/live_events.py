"""Each job's live event stream in Redis: what ``GET /v1/jobs/{id}/events`` and ``Prefer: wait`` read.

The stream only makes watching cheap; Postgres stays the record. A Redis failure costs live viewers an
update, never a job its state.
"""

import json
import logging
import uuid
from typing import Any

from redis.exceptions import RedisError

from core.redis_client import get_redis

log = logging.getLogger(__name__)

STREAM_TTL_S = 86_400
STREAM_MAXLEN = 2_000


def stream_key(job_id: object) -> str:
    """The Redis stream of one job's live events."""
    return f"imagen:events:{job_id}"


def append_live(job_id: uuid.UUID, event: str, data: dict[str, Any]) -> None:
    """Append one event to the job's stream; a Redis failure is only logged."""
    try:
        key = stream_key(job_id)
        # One round trip for both (a submission waits on it); no MULTI: the TTL only bounds an idle stream's life.
        pipe = get_redis().pipeline(transaction=False)
        pipe.xadd(key, {"event": event, "data": json.dumps(data)}, maxlen=STREAM_MAXLEN, approximate=True)
        pipe.expire(key, STREAM_TTL_S)
        pipe.execute()
    except RedisError as exc:
        log.warning("could not publish %s of job %s: %s", event, job_id, exc)
