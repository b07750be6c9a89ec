"""/v1/jobs/{id}/events: a job's progress as Server-Sent Events, resumable with Last-Event-ID."""

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import redis.asyncio as aioredis
from fastapi import APIRouter, Header
from fastapi.responses import StreamingResponse
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from api.deps import CurrentJob, CurrentKey, SessionDep, SettingsDep
from api.long_requests import Slot, release_slot, renew_slot, take_slot
from core.config import Settings, get_settings
from core.errors import TooManyRequests
from core.live_events import stream_key
from core.redis_client import client_url
from db import jobs as job_queries
from db import tenants
from db.models import JobStatus
from db.session import session_scope

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

KEEPALIVE_S = 15.0
# A stream's slot (see api.long_requests) lasts this long past each renewal: a few key checks' worth.
SLOT_TTL_S = 60.0
_STREAM_ID_CHARS = set("0123456789-")


def _frame(event: str, data: str, event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {data}\n\n"


def _final_state(job_id: object) -> tuple[str, str] | None:
    """(status, error) of an ended job, read from its row; None while it runs."""
    with session_scope() as session:
        job = job_queries.get_job(session, job_id=job_id)  # type: ignore[arg-type]
        if job is None or not JobStatus(job.status).is_terminal:
            return None
        return str(job.status), json.dumps({"status": str(job.status), "error": job.error})


def _key_is_live(key_id: uuid.UUID) -> bool:
    try:
        with session_scope() as session:
            return tenants.api_key_is_live(session, key_id=key_id)
    except SQLAlchemyError:
        return True  # the database cannot tell now: the stream goes on and asks again at the next check


async def _stream(job_id: object, last_event_id: str, *, key_id: uuid.UUID, slot: Slot) -> AsyncIterator[str]:
    settings = get_settings()
    client = aioredis.Redis.from_url(client_url(settings.redis_url), socket_connect_timeout=2)
    key = stream_key(job_id)
    check_every_s = min(settings.stream_key_check_s, SLOT_TTL_S / 4)
    block_ms = int(min(KEEPALIVE_S, check_every_s) * 1000)
    checked_at = time.monotonic()
    try:
        while True:
            if time.monotonic() - checked_at >= check_every_s:
                # A stream outlives the request that opened it: it ends soon after its key is revoked.
                if not await run_in_threadpool(_key_is_live, key_id):
                    yield _frame("error", json.dumps({"code": "unauthorized", "message": "the API key was revoked"}))
                    return
                await run_in_threadpool(renew_slot, slot, ttl_s=SLOT_TTL_S)
                checked_at = time.monotonic()
            replies: Any
            try:
                replies = await client.xread({key: last_event_id}, block=block_ms, count=100)
            except RedisError:
                replies = None
            for _stream_name, entries in replies or []:
                for entry_id, fields in entries:
                    last_event_id = entry_id.decode()
                    event = fields[b"event"].decode()
                    yield _frame(event, fields[b"data"].decode(), last_event_id)
                    if event == "done":
                        return
            if replies:
                continue
            # Nothing new: the job may have ended while its stream was lost (Redis restarted) or expired.
            final = await run_in_threadpool(_final_state, job_id)
            if final is not None:
                status, data = final
                yield _frame("status", data)
                yield _frame("done", json.dumps({"status": status}))
                return
            if replies is None:  # Redis is down: poll the row instead of spinning
                await asyncio.sleep(1.0)
            yield ": keepalive\n\n"
    finally:
        await client.aclose()
        await run_in_threadpool(release_slot, slot)


@router.get("/{job_id}/events", response_class=StreamingResponse)
def stream_job_events(
    job: CurrentJob,
    key: CurrentKey,
    session: SessionDep,
    settings: SettingsDep,
    last_event_id: Annotated[str | None, Header(max_length=64)] = None,
) -> StreamingResponse:
    """Server-Sent Events: ``status``, ``stage``, ``progress`` and a final ``done``; resume with Last-Event-ID."""
    key_id, tenant_id = key.key_id, key.tenant_id
    session.close()  # the stream may last minutes: hold no database connection meanwhile
    return event_stream_response(job.id, last_event_id, key_id=key_id, tenant_id=tenant_id, settings=settings)


def event_stream_response(
    job_id: uuid.UUID, last_event_id: str | None, *, key_id: uuid.UUID, tenant_id: uuid.UUID, settings: Settings
) -> StreamingResponse:
    """A job's event stream for the holder of ``key_id``: the API's route and the dashboard's share it.

    The caller has checked that the key may read the job and holds no database connection; the stream
    counts against the tenant's open streams and ends soon after the key is revoked.
    """
    start = last_event_id if last_event_id and set(last_event_id) <= _STREAM_ID_CHARS else "0-0"
    slot = take_slot("stream", tenant_id, limit=settings.max_streams_per_tenant, ttl_s=SLOT_TTL_S)
    if slot is None:
        raise TooManyRequests(
            f"at most {settings.max_streams_per_tenant} event streams of a tenant are open at once;"
            " close one, or poll GET /v1/jobs/{id}",
            retry_after_s=int(KEEPALIVE_S),
        )
    return StreamingResponse(
        _stream(job_id, start, key_id=key_id, slot=slot),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
