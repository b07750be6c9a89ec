"""Where workers publish which models they hold and how long each took to load, for the API's /metrics.

Each worker process loads its models once; it records the time in one Redis hash, a field per
(worker process, preset, model), and keeps a key of its own alive while it runs (refreshed by a thread,
so a worker deep in a long stage still counts as alive): the models of a worker whose key expired are
no longer held by anyone. Importing this module never imports torch.
"""

import atexit
import contextlib
import logging
import os
import socket
import threading

from redis.exceptions import RedisError

from core.redis_client import get_redis

log = logging.getLogger(__name__)

MODEL_LOADS_KEY = "imagen:model-loads"
# Refreshed by every load: the hash of a deployment whose workers all stopped ends by itself.
_KEY_TTL_S = 30 * 24 * 3600
_SEP = "|"
_ALIVE_PREFIX = "imagen:worker-alive:"
# A worker's key outlives a few missed refreshes (a Redis blip), not a dead worker by long.
ALIVE_TTL_S = 60
_ALIVE_REFRESH_S = 15
_alive_thread: threading.Thread | None = None
# The Celery node name of this process (``name@host``), kept as the value of its liveness key, so that the
# dashboard puts each model with the worker that holds it (several workers share a host).
_node_name = ""
_alive_lock = threading.Lock()


def alive_key(worker: str) -> str:
    """The key a worker process keeps alive while it holds models."""
    return _ALIVE_PREFIX + worker


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
        pipe.set(alive_key(worker_name()), _node_name or "1", ex=ALIVE_TTL_S)
        pipe.execute()
    except RedisError as exc:
        # The model is loaded and the stage can run; only the metric is missing.
        log.warning("could not publish the load time of %s/%s: %s", preset, model, exc)
    _keep_alive()


def set_node_name(name: str) -> None:
    """Record this process's Celery node name (a worker calls it once it is set up)."""
    global _node_name
    _node_name = name


def node_names(workers: list[str]) -> dict[str, str]:
    """The Celery node name of each live one of ``workers`` (``host:pid``) that recorded one, in one round trip."""
    if not workers:
        return {}
    values = get_redis().mget([alive_key(worker) for worker in workers])
    names = {}
    for worker, value in zip(workers, values, strict=True):
        name = value.decode(errors="replace") if isinstance(value, bytes) else value
        if name is not None and name != "1":
            names[worker] = name
    return names


def _keep_alive() -> None:
    """Start (once per process) the thread that keeps this worker's key alive, and drop it at exit."""
    global _alive_thread
    with _alive_lock:
        if _alive_thread is not None and _alive_thread.is_alive():
            return
        worker = worker_name()

        def refresh() -> None:
            while True:
                threading.Event().wait(_ALIVE_REFRESH_S)
                try:
                    get_redis().set(alive_key(worker), _node_name or "1", ex=ALIVE_TTL_S)
                except RedisError as exc:
                    log.warning("could not refresh this worker's liveness: %s", exc)

        _alive_thread = threading.Thread(target=refresh, name="models-alive", daemon=True)
        _alive_thread.start()
        atexit.register(_forget, worker)


def _forget(worker: str) -> None:
    """On a clean exit: this process holds no model any more."""
    with contextlib.suppress(RedisError):  # else the key expires by itself
        get_redis().delete(alive_key(worker))


def live_workers(workers: set[str]) -> set[str]:
    """Those of ``workers`` whose process still runs (its key is alive), in one round trip."""
    ordered = sorted(workers)
    pipe = get_redis().pipeline(transaction=False)
    for worker in ordered:
        pipe.exists(alive_key(worker))
    return {worker for worker, alive in zip(ordered, pipe.execute(), strict=True) if alive}
