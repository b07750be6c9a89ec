"""The Celery application: broker, per-stage queues, routing and the reliability settings.

Importing this module never imports torch: the API imports it to enqueue work by task name.
"""

from datetime import timedelta
from typing import Any

from celery import Celery, Task
from celery.signals import before_task_publish, task_postrun, task_prerun
from kombu import Queue

from core import logs
from core.config import get_settings
from core.routing import QUEUES, SWEEP_TASK, TASK_QUEUES


def create_app() -> Celery:
    """A Celery app configured from the settings."""
    settings = get_settings()
    app = Celery("imagen", broker=settings.redis_url, include=["workers.tasks"])
    # Longer than the longest stage, or Redis would hand a running stage to a second worker.
    visibility_timeout = settings.stage_time_limit_s + 600
    app.conf.update(
        task_queues=[Queue(name) for name in QUEUES],
        task_default_queue="control",
        task_routes={task: {"queue": queue} for task, queue in TASK_QUEUES.items()},
        task_serializer="json",
        accept_content=["json"],
        # Stages report through Postgres. Only the search query embedding answers its caller (the API)
        # through a result, which expires quickly.
        task_ignore_result=True,
        # Celery reads "redis+socket://" as the redis backend on a unix socket, as the broker does.
        result_backend=settings.redis_url,
        result_expires=300,
        # A search waits on its query's result; with Redis down it should fail in a second (a 503), not
        # after Celery's default of 20 reconnects a second apart.
        result_backend_transport_options={
            "retry_policy": {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}
        },
        # A stage is acknowledged only when it finished, and handed back if its worker dies.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.stage_time_limit_s,
        broker_transport_options={
            "visibility_timeout": visibility_timeout,
            # Job priority 0..9 (9 first) maps onto Redis' priority lists (0 first).
            "priority_steps": list(range(10)),
            "sep": ":",
            "queue_order_strategy": "priority",
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
        },
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
        beat_schedule={
            # A sweep that waited longer than the interval is dropped: the next one does its work.
            "sweep": {
                "task": SWEEP_TASK,
                "schedule": timedelta(seconds=settings.sweep_interval_s),
                "options": {"expires": settings.sweep_interval_s},
            },
        },
    )
    return app


app = create_app()


@before_task_publish.connect
def _carry_request_id(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """A message sent while serving a request (or running a task of one) carries its request id, unless the
    sender set one (a job's stages carry the job's own: see ``workers.dispatch.enqueue_stage``)."""
    if headers is not None:
        headers.update(logs.task_headers(headers))


@task_prerun.connect
def _bind_log_context(task_id: str | None = None, task: Task | None = None, args: Any = None, **_: Any) -> None:
    """Every log line of a task names its request, task and, for a stage task ``(job_id, stage, seq)``, its
    job and stage."""
    if task is None:
        return
    request_id = task.request.get(logs.REQUEST_ID_TASK_HEADER) or (task.request.headers or {}).get(
        logs.REQUEST_ID_TASK_HEADER
    )
    job_id = stage = None
    if isinstance(args, list | tuple) and len(args) == 3 and isinstance(args[1], str):
        job_id, stage = str(args[0]), args[1]
    task.request.imagen_log_tokens = logs.bind(
        request_id=request_id or None, task_id=task_id, job_id=job_id, stage=stage
    )


@task_postrun.connect
def _unbind_log_context(task: Task | None = None, **_: Any) -> None:
    tokens = getattr(task.request, "imagen_log_tokens", None) if task is not None else None
    if tokens:
        logs.unbind(tokens)
