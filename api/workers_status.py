"""Which Celery workers are online, what queues they serve, and which models they have loaded."""

from dataclasses import dataclass, field

from redis.exceptions import RedisError

from core.model_loads import MODEL_LOADS_KEY, parse_model_load_field
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
    except RedisError:
        loads = {}
    for raw_field, raw_seconds in loads.items():
        parsed = parse_model_load_field(raw_field.decode(errors="replace"))
        if parsed is None:
            continue
        process, preset, model = parsed
        host = process.rsplit(":", 1)[0]
        for worker in workers:
            if worker.name.split("@", 1)[-1] == host:
                worker.models.append((preset, model, float(raw_seconds)))
    for worker in workers:
        worker.models = sorted(set(worker.models))
    return workers
