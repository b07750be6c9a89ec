"""Where workers publish how long their models took to load, for the API's /metrics to read.

Each worker process loads its models once; it records the time in one Redis hash, a field per
(worker process, preset, model). Importing this module never imports torch.
"""

import logging
import os
import socket

from redis.exceptions import RedisError

from core.redis_client import get_redis

log = logging.getLogger(__name__)

MODEL_LOADS_KEY = "imagen:model-loads"
# Refreshed by every load: the hash of a deployment whose workers all stopped ends by itself.
_KEY_TTL_S = 30 * 24 * 3600
_SEP = "|"


def worker_name() -> str:
    """This process, as ``hostname:pid`` (one machine runs several worker processes)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def model_load_field(worker: str, preset: str, model: str) -> str:
    """The hash field of one model of one worker process."""
    return _SEP.join((worker, preset, model))


def parse_model_load_field(field: str) -> tuple[str, str, str] | None:
    """(worker, preset, model) of a hash field, or None if it is not one."""
    parts = field.split(_SEP)
    if len(parts) != 3 or not all(parts):
        return None
    return parts[0], parts[1], parts[2]


def record_model_load(preset: str, model: str, seconds: float) -> None:
    """Publish that this process loaded ``model`` of ``preset`` in ``seconds``; a Redis outage only logs."""
    try:
        pipe = get_redis().pipeline(transaction=False)
        pipe.hset(MODEL_LOADS_KEY, model_load_field(worker_name(), preset, model), f"{seconds:.6f}")
        pipe.expire(MODEL_LOADS_KEY, _KEY_TTL_S)
        pipe.execute()
    except RedisError as exc:
        # The model is loaded and the stage can run; only the metric is missing.
        log.warning("could not publish the load time of %s/%s: %s", preset, model, exc)
