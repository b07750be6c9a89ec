"""A webhook event's payload as the outbox keeps it, and as each attempt sends it.

Image URLs are presigned for ``IMAGEN_PRESIGN_TTL_S`` (an hour by default) while an event's retries run
for hours, so the outbox never keeps a URL: it keeps the job snapshot with every image URL null, and
beside it the event's ``image_keys``, a list of ``[path, key]`` pairs (the path: the keys and indexes
that lead to the URL's place in the payload; the key: the object it signs). Each attempt signs fresh
URLs into a copy of the payload. Between the attempts of one event, the body differs only by those URLs
(and the signature by its timestamp); the ``webhook-id`` stays the same.
"""

import copy
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from core.job_view import JobPublic

if TYPE_CHECKING:
    from db.models import Job

Path = list[str | int]


class _UrlSlots:
    """Stands in for the store while a snapshot is built: each URL it is asked for becomes a marker."""

    def __init__(self) -> None:
        # Unguessable: no string of the client's (a prompt, metadata) can pass for a marker.
        self._nonce = secrets.token_hex(16)
        self.keys: dict[str, str] = {}

    def presigned_url(self, key: str, ttl_s: int) -> str:
        marker = f"{self._nonce}:{len(self.keys)}"
        self.keys[marker] = key
        return marker


def job_snapshot(job: "Job") -> tuple[dict[str, Any], list[tuple[Path, str]]]:
    """The job as clients see it, with every image URL null, and where each URL goes with its object key."""
    slots = _UrlSlots()
    snapshot = JobPublic.from_row(job, slots, 0).model_dump(mode="json")
    found: list[tuple[Path, str]] = []

    def visit(node: Any, path: Path) -> Any:
        if isinstance(node, dict):
            return {k: visit(v, [*path, k]) for k, v in node.items()}
        if isinstance(node, list):
            return [visit(v, [*path, i]) for i, v in enumerate(node)]
        if isinstance(node, str) and node in slots.keys:
            found.append((path, slots.keys[node]))
            return None
        return node

    return visit(snapshot, []), found


def with_image_urls(payload: dict[str, Any], image_keys: list[Any], sign: Callable[[str], str]) -> dict[str, Any]:
    """A copy of ``payload`` with a URL freshly signed by ``sign`` at each place ``image_keys`` names."""
    if not image_keys:
        return payload
    filled = copy.deepcopy(payload)
    for path, key in image_keys:
        node: Any = filled
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = sign(key)
    return filled
