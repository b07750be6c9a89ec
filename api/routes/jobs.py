"""/v1/jobs: submit, read, list, cancel, retry and delete jobs."""

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Response, status

from api.deps import CurrentKey, JobSnapshot, LockedJob, SessionDep, SettingsDep, StoreDep
from api.etags import job_etag, none_match
from api.job_control import cancel_job_now, delete_job_now, retry_job_now
from api.long_requests import wait_slot
from api.openapi import error_responses
from api.prefer_wait import parse_prefer_wait, wait_for_job
from api.quotas import check_jobs_in_flight, check_priority
from api.schemas import JobCreate, JobList
from api.submission import create_job_row, idempotent_replay, request_fingerprint
from core.job_view import JobPublic
from core.live_events import append_live
from core.metric_counts import count_events
from core.presets import get_preset
from core.statuses import JobStatus
from db import jobs as job_queries
from db.idempotency import remember_idempotency_key
from workers.dispatch import dispatch_new_job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
_JSON = "application/json"

_LOCATION = {"Location": {"description": "the job's URL: `/v1/jobs/{id}`", "schema": {"type": "string"}}}
_PREFERENCE_APPLIED = {
    "Preference-Applied": {
        "description": "`wait=N` when the answer was held for `Prefer: wait=N` (absent when the server ignored it)",
        "schema": {"type": "string"},
    }
}
# An 8x8 PNG: the smallest image a caption or index job takes as it is.
_EXAMPLE_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFUlEQVR42mM8UaHBgA0wMeAAg1MCAB4nAXgllso1AAAAAElFTkSuQmCC"
)
_JOB_EXAMPLES: dict[str, Any] = {
    "generate": {
        "summary": "generate: text to image through the cascade",
        "value": {
            "kind": "generate",
            "input": {
                "prompt": "a corgi wearing a crown",
                "negative_prompt": "blurry",
                "num_images": 1,
                "seed": 42,
                "stages": {"base": {"steps": 50, "guidance_scale": 7.0}, "sr256": {"steps": 25, "noise_level": 250}},
                "caption": True,
                "index": False,
                "output_format": "webp",
                "output_quality": 90,
            },
            "priority": 5,
            "metadata": {"user": "u-17"},
        },
    },
    "caption": {
        "summary": "caption: describe an image in words",
        "value": {"kind": "caption", "input": {"image": {"base64": _EXAMPLE_PNG}, "max_new_tokens": 30}},
    },
    "index": {
        "summary": "index: add an earlier job's image to the tenant's search index",
        "value": {
            "kind": "index",
            "input": {
                "image": {
                    "artifact": {"job_id": "0b9c1a52-5a3c-4c0e-9f4e-2f1d7c3b8a10", "stage": "sr_1024", "index": 0}
                },
                "text": "a corgi wearing a crown",
                "collection": "default",
            },
        },
    },
}


def _job_location(job_id: object) -> str:
    return f"{router.prefix}/{job_id}"


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobPublic,
    responses={
        202: {"description": "the job is recorded and queued", "headers": _LOCATION},
        200: {
            "model": JobPublic,
            "description": "the job ended within `Prefer: wait`",
            "headers": {**_LOCATION, **_PREFERENCE_APPLIED},
        },
        **error_responses(
            404,
            409,
            s404="input.image names an artifact that is not among the tenant's jobs, or no longer stored",
            s409="this Idempotency-Key was used with another request body",
        ),
    },
)
def create_job(
    body: Annotated[JobCreate, Body(openapi_examples=_JOB_EXAMPLES)],
    key: CurrentKey,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
    prefer: Annotated[str | None, Header(max_length=200)] = None,
) -> Response:
    """Record a job and enqueue its first stage (``Idempotency-Key`` and ``Prefer: wait=N`` honoured)."""
    wait_s = parse_prefer_wait(prefer)
    check_priority(body.priority, tenant=key.tenant, settings=settings)
    fingerprint = request_fingerprint(body) if idempotency_key else ""
    job = None
    if idempotency_key:
        job = idempotent_replay(session, key=key, idempotency_key=idempotency_key, fingerprint=fingerprint)
    if job is None:
        job = create_job_row(
            session, key=key, body=body, preset=get_preset(settings.model_preset), store=store, settings=settings
        )
        if idempotency_key and not remember_idempotency_key(
            session, tenant_id=key.tenant_id, key=idempotency_key, request_hash=fingerprint, job_id=job.id
        ):
            job = idempotent_replay(session, key=key, idempotency_key=idempotency_key, fingerprint=fingerprint)
            assert job is not None  # the request that won the race committed it
        else:
            # Checked last, with this job counted in: replays (concurrent ones included) never reach it,
            # and the tenant's other submissions wait for this one only from here to the commit.
            check_jobs_in_flight(session, tenant=key.tenant, settings=settings)
            session.commit()
            append_live(job.id, "status", {"status": str(job.status)})
            count_events(submitted=[job.kind])
            dispatch_new_job(session, job)
    headers: dict[str, str] = {"Location": _job_location(job.id)}
    if wait_s > 0 and not JobStatus(job.status).is_terminal:
        with wait_slot(
            key.tenant_id,
            per_tenant=settings.max_waits_per_tenant,
            per_process=settings.max_waits_per_process,
            timeout_s=wait_s,
        ) as may_wait:
            if may_wait:
                job = wait_for_job(session, job, wait_s)
                headers["Preference-Applied"] = f"wait={wait_s:g}"
    ended = JobStatus(job.status).is_terminal and wait_s > 0
    # Serialized here, straight from the model: FastAPI would validate the model a second time.
    public = JobPublic.from_row(job, store, settings.presign_ttl_s).model_dump_json()
    status_code = status.HTTP_200_OK if ended else status.HTTP_202_ACCEPTED
    return Response(public, status_code=status_code, media_type=_JSON, headers=headers)


@router.get("", response_model=JobList)
def list_jobs(
    key: CurrentKey,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    status: JobStatus | None = None,
    kind: str | None = Query(default=None, max_length=16),
    limit: int = Query(default=20, ge=1, le=100),
    cursor: str | None = Query(default=None, max_length=200),
) -> JobList:
    """The tenant's jobs, newest first."""
    jobs, next_cursor = job_queries.list_jobs(
        session, tenant_id=key.tenant_id, status=status, kind=kind, limit=limit, cursor=cursor
    )
    return JobList(items=[JobPublic.from_row(j, store, settings.presign_ttl_s) for j in jobs], next_cursor=next_cursor)


@router.get(
    "/{job_id}",
    response_model=JobPublic,
    responses={304: {"description": "the job has not changed since the response that carried If-None-Match's ETag"}},
)
async def read_job(
    job: JobSnapshot,
    store: StoreDep,
    settings: SettingsDep,
    if_none_match: Annotated[str | None, Header(max_length=1000)] = None,
) -> Response:
    """One job, with its stages and, once it succeeded, its images; a 304 if it is as the client's ETag says."""
    etag = job_etag(job, settings.presign_ttl_s)
    if none_match(if_none_match, etag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag})
    # Serialized here, straight from the model: FastAPI would validate the model a second time.
    body = JobPublic.from_row(job, store, settings.presign_ttl_s).model_dump_json()
    return Response(body, media_type=_JSON, headers={"ETag": etag})


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(job: LockedJob, session: SessionDep, store: StoreDep, settings: SettingsDep) -> JobPublic:
    """Cancel now, or as soon as the running stage notices."""
    cancel_job_now(session, job)
    return JobPublic.from_row(job, store, settings.presign_ttl_s)


@router.post(
    "/{job_id}/retry",
    response_model=JobPublic,
    responses=error_responses(409, s409="the job is neither failed nor canceled, or it was deleted"),
)
def retry_job(job: LockedJob, session: SessionDep, store: StoreDep, settings: SettingsDep) -> JobPublic:
    """Queue a failed or canceled job again from its first unfinished stage (it counts against the quota)."""
    retry_job_now(session, job, quota=settings)
    return JobPublic.from_row(job, store, settings.presign_ttl_s)


@router.delete(
    "/{job_id}",
    response_model=JobPublic,
    responses=error_responses(409, s409="the job has not finished: cancel it first, then delete it"),
)
def delete_job(job: LockedJob, session: SessionDep, store: StoreDep, settings: SettingsDep) -> JobPublic:
    """Delete a finished job's images, embeddings, upload and index entries; the job stays, with ``deleted_at``."""
    delete_job_now(session, job, store, upload_grace_s=settings.unused_upload_ttl_s)
    return JobPublic.from_row(job, store, settings.presign_ttl_s)
