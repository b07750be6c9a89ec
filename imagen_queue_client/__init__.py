"""A Python client of the imagen-queue HTTP API, sync and async, with typed jobs and errors.

It depends on httpx alone and imports nothing of the server::

    from imagen_queue_client import Client

    with Client("http://127.0.0.1:8000", "iq_...") as client:  # or IMAGEN_API_URL / IMAGEN_API_KEY
        job = client.wait(client.generate("a red circle on the left", seed=1).id)
        client.download(job.images[0], "circle.png")
"""

from imagen_queue_client._requests import VERSION as __version__
from imagen_queue_client._requests import RetryPolicy, image_input
from imagen_queue_client.async_client import AsyncClient
from imagen_queue_client.client import Client
from imagen_queue_client.errors import (
    ApiError,
    Conflict,
    ConnectionFailed,
    Forbidden,
    InvalidInput,
    NotFound,
    RateLimited,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)
from imagen_queue_client.models import (
    Delivery,
    DeliveryAttempt,
    Event,
    Image,
    Job,
    JobOutput,
    JobPage,
    SearchResult,
    Stage,
    StageOutput,
    WebhookEvent,
)
from imagen_queue_client.webhooks import WebhookVerificationError, sign_webhook, verify_webhook

__all__ = [
    "ApiError",
    "AsyncClient",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Delivery",
    "DeliveryAttempt",
    "Event",
    "Forbidden",
    "Image",
    "InvalidInput",
    "Job",
    "JobOutput",
    "JobPage",
    "NotFound",
    "RateLimited",
    "RetryPolicy",
    "SearchResult",
    "Stage",
    "StageOutput",
    "Unauthorized",
    "Unavailable",
    "WaitTimeout",
    "WebhookEvent",
    "WebhookVerificationError",
    "__version__",
    "image_input",
    "sign_webhook",
    "verify_webhook",
]
