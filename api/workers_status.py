"""Which Celery workers are online, what queues they serve, and which models they have loaded."""

from dataclasses import dataclass, field

from redis.exceptions import RedisError

from core.model_loads import MODEL_LOADS_KEY, node_names, parse_model_load_field
from core.redis_client import get_redis


@dataclass
class WorkerStatus:
    name: str
    queues: list[str]
    models: list[tuple[str, str, float]] = field(default_factory=list)  # (preset, model, load seconds)


def workers_online(timeout_s: float = 0.5) -> list[WorkerStatus]:
    """Workers that answered a broadcast within ``timeout_s``, with the models loaded on their host.

    A solo-pool worker answers between tasks only: one in the middle of a long stage may be missing.
    """
    from workers.celery_app import app

    replies = app.control.inspect(timeout=timeout_s).active_queues() or {}
    workers = [WorkerStatus(name, sorted(q["name"] for q in queues)) for name, queues in sorted(replies.items())]
    loads: dict[bytes, bytes]
    try:
        loads = get_redis().hgetall(MODEL_LOADS_KEY)  # type: ignore[assignment]
        parsed = [(parse_model_load_field(f.decode(errors="replace")), float(s)) for f, s in loads.items()]
        rows = [(row, seconds) for row, seconds in parsed if row is not None]
        # Each worker process names its Celery node in its liveness key: a model goes with the worker
        # that holds it, not with every worker on its host; a process that is gone holds nothing.
        nodes = node_names(sorted({process for (process, _, _), _ in rows}))
    except RedisError:
        rows, nodes = [], {}
    by_name = {worker.name: worker for worker in workers}
    for (process, preset, model), seconds in rows:
        worker = by_name.get(nodes.get(process, ""))
        if worker is not None:
            worker.models.append((preset, model, seconds))
    for worker in workers:
        worker.models = sorted(set(worker.models))
    return workers
