"""/admin: the server-rendered job dashboard for operators (admin API keys only)."""

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from kombu.exceptions import KombuError
from redis.exceptions import RedisError
from sqlalchemy.orm import Session

from api.admin_auth import (
    AdminFormDep,
    AdminSession,
    AdminSessionDep,
    clear_session_cookie,
    read_form,
    session_token,
    set_session_cookie,
)
from api.callers import forget_key
from api.deps import SessionDep, SettingsDep, StoreDep
from api.job_control import cancel_job_now, redeliver_event, retry_job_now
from api.metrics import queue_depths
from api.quotas import enforce_sign_in_rate
from api.routes.events import event_stream_response
from api.workers_status import WorkerStatus, workers_online
from core.config import Settings
from core.errors import DomainError, RateLimited
from core.job_input import JOB_KINDS
from core.job_view import JobPublic
from core.limits import MAX_PRIORITY, MAX_QUOTA, parse_priority_ceiling, parse_quota
from db import dashboard
from db import jobs as job_queries
from db import tenants as tenant_queries
from db import webhooks as webhook_queries
from db.models import ApiKey, Job, JobStatus, Tenant

router = APIRouter(prefix="/admin", include_in_schema=False)

_HERE = Path(__file__).resolve().parent.parent
templates = Jinja2Templates(directory=_HERE / "templates")
_STYLESHEET = _HERE / "static" / "admin.css"
_JOB_SCRIPT = _HERE / "static" / "job.js"
PAGE_SIZE = 50


def _render(
    request: Request, name: str, admin: AdminSession | None, status_code: int = 200, **context: Any
) -> HTMLResponse:
    context.setdefault("csrf", admin.csrf if admin else "")
    context.setdefault("admin", admin)
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def _see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _parse_job_id(job_id: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(job_id)
    except ValueError:
        return None


def _parse_time(value: str | None) -> datetime | None:
    """A ``datetime-local`` value (or any ISO 8601 time), read as UTC when it names no zone."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _tenant_names(session: Session) -> dict[uuid.UUID, str]:
    return {tenant.id: tenant.name for tenant, _ in tenant_queries.list_tenants(session)}


@router.get("/static/admin.css")
def read_stylesheet() -> FileResponse:
    """The dashboard's one stylesheet."""
    return FileResponse(_STYLESHEET, media_type="text/css", headers={"Cache-Control": "max-age=3600"})


@router.get("/static/job.js")
def read_job_script() -> FileResponse:
    """The job page's script: it follows the job's event stream and updates the page in place."""
    return FileResponse(_JOB_SCRIPT, media_type="text/javascript", headers={"Cache-Control": "max-age=3600"})


@router.get("/login", response_class=HTMLResponse)
def read_login(request: Request) -> HTMLResponse:
    """The sign-in form, which takes an admin API key."""
    return _render(request, "login.html", None)


@router.post("/login")
def create_session(
    request: Request,
    fields: Annotated[dict[str, str], Depends(read_form)],
    session: SessionDep,
    settings: SettingsDep,
) -> Response:
    """Sign in with an admin API key: set the session cookie and go to the overview."""
    try:
        enforce_sign_in_rate(request.client.host if request.client else "unknown", settings=settings)
    except RateLimited as exc:
        page = _render(request, "login.html", None, status_code=429, error=exc.message)
        page.headers["Retry-After"] = str(exc.retry_after_s)
        return page
    key_text = fields.get("key", "").strip()
    key = tenant_queries.find_api_key(session, key=key_text) if key_text else None
    if key is None or not key.is_admin:
        return _render(request, "login.html", None, status_code=401, error="That is not a live admin API key.")
    response = _see_other("/admin")
    set_session_cookie(response, request, session_token(settings, key.id))
    return response


@router.post("/logout")
def delete_session(form: AdminFormDep) -> Response:
    """Sign out: forget the session cookie."""
    response = _see_other("/admin/login")
    clear_session_cookie(response)
    return response


@router.get("", response_class=HTMLResponse)
def read_overview(request: Request, admin: AdminSessionDep, session: SessionDep) -> HTMLResponse:
    """Jobs by status and kind, throughput, queue depths, stage percentiles and webhook failures."""
    now = datetime.now(UTC)
    hour_ago, day_ago = now - timedelta(hours=1), now - timedelta(days=1)
    last_hour = dashboard.job_counts_since(session, since=hour_ago)
    last_day = dashboard.job_counts_since(session, since=day_ago)
    per_minute = {at.astimezone(UTC): n for at, n in dashboard.finished_per_minute(session, since=hour_ago).items()}
    last_minute = now.replace(second=0, microsecond=0)
    minutes = [last_minute - timedelta(minutes=m) for m in range(59, -1, -1)]
    throughput = [(at, per_minute.get(at, 0)) for at in minutes]
    percentiles = dashboard.stage_duration_percentiles(session, since=day_ago)
    failed, events = dashboard.webhook_failure_counts(session, since=day_ago)
    session.rollback()  # read-only: end the transaction before talking to Redis
    try:
        depths: dict[str, int] | None = queue_depths()
        online: list[WorkerStatus] | None = workers_online()
    except (RedisError, OSError, KombuError):
        depths, online = None, None
    kinds = sorted({k for k, _ in last_day} | set(JOB_KINDS))
    return _render(
        request,
        "overview.html",
        admin,
        kinds=kinds,
        statuses=[s.value for s in JobStatus],
        windows=[("last hour", last_hour), ("last day", last_day)],
        throughput=throughput,
        workers=online,
        throughput_max=max([n for _, n in throughput] + [1]),
        throughput_total=sum(n for _, n in throughput),
        depths=depths,
        percentiles=percentiles,
        webhook_failed=failed,
        webhook_events=events,
    )


@router.get("/jobs", response_class=HTMLResponse)
def list_jobs(
    request: Request,
    admin: AdminSessionDep,
    session: SessionDep,
    status: str | None = Query(default=None, max_length=16),
    kind: str | None = Query(default=None, max_length=16),
    tenant: str | None = Query(default=None, max_length=100),
    created_from: str | None = Query(default=None, alias="from", max_length=40),
    created_to: str | None = Query(default=None, alias="to", max_length=40),
    prompt: str | None = Query(default=None, max_length=200),
    cursor: str | None = Query(default=None, max_length=200),
    fragment: bool = False,
) -> HTMLResponse:
    """Every tenant's jobs, newest first, filtered; ``fragment=1`` gives only the table, for live refresh."""
    filters = {
        "status": status or "",
        "kind": kind or "",
        "tenant": tenant or "",
        "from": created_from or "",
        "to": created_to or "",
        "prompt": prompt or "",
    }
    names = _tenant_names(session)
    tenant_id: uuid.UUID | None = None
    jobs: list[Job] = []
    next_cursor = None
    if tenant:
        tenant_id = next((tid for tid, name in names.items() if name == tenant), None)
    if not tenant or tenant_id is not None:
        jobs, next_cursor = job_queries.list_jobs(
            session,
            tenant_id=tenant_id,
            status=JobStatus(status) if status in set(JobStatus) else None,
            kind=kind or None,
            limit=PAGE_SIZE,
            cursor=cursor or None,
            created_from=_parse_time(created_from),
            created_to=_parse_time(created_to),
            prompt=prompt or None,
        )
    query = {name: value for name, value in filters.items() if value}
    context: dict[str, Any] = {
        "jobs": jobs,
        "tenant_names": names,
        "filters": filters,
        "statuses": [s.value for s in JobStatus],
        "kinds": JOB_KINDS,
        "query": urlencode(query),
        "next_url": f"/admin/jobs?{urlencode({**query, 'cursor': next_cursor})}" if next_cursor else None,
        "first_page": not cursor,
        "fragment_url": f"/admin/jobs?{urlencode({**query, **({'cursor': cursor} if cursor else {}), 'fragment': 1})}",
    }
    return _render(request, "jobs_table.html" if fragment else "jobs.html", admin, **context)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def read_job(
    request: Request,
    job_id: str,
    admin: AdminSessionDep,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    error: str | None = Query(default=None, max_length=500),
) -> HTMLResponse:
    """One job: input, stage timeline, every stage's images and captions, webhook deliveries, actions."""
    parsed = _parse_job_id(job_id)
    job = job_queries.get_job(session, job_id=parsed) if parsed else None
    if job is None:
        return _render(request, "not_found.html", admin, status_code=404, what=f"job {job_id}")
    public = JobPublic.from_row(job, store, settings.presign_ttl_s)
    tenant = session.get(Tenant, job.tenant_id)
    return _render(
        request,
        "job.html",
        admin,
        job=public,
        tenant=tenant.name if tenant else str(job.tenant_id),
        input_json=json.dumps(job.input, indent=2, sort_keys=True),
        metadata_json=json.dumps(job.meta, indent=2, sort_keys=True),
        webhook=job.webhook,
        deliveries=webhook_queries.list_deliveries(session, job_id=job.id),
        error=error,
        can_cancel=not JobStatus(job.status).is_terminal and not job.cancel_requested,
        can_retry=job.status in (JobStatus.FAILED, JobStatus.CANCELED) and job.deleted_at is None,
        cancel_requested=job.cancel_requested,
    )


@router.get("/jobs/{job_id}/events", response_class=StreamingResponse)
def stream_job_events(
    job_id: str,
    admin: AdminSessionDep,
    session: SessionDep,
    settings: SettingsDep,
    last_event_id: Annotated[str | None, Header(max_length=64)] = None,
) -> Response:
    """The job's Server-Sent Events for the job page, under the admin's session rather than an API key."""
    parsed = _parse_job_id(job_id)
    job = job_queries.get_job(session, job_id=parsed) if parsed else None
    if job is None:
        return Response("no such job", status_code=404, media_type="text/plain")
    key_id, tenant_id = admin.key.id, admin.key.tenant_id
    session.close()  # the stream may last minutes: hold no database connection meanwhile
    return event_stream_response(job.id, last_event_id, key_id=key_id, tenant_id=tenant_id, settings=settings)


def _job_action(session: Session, job_id: str, action: str, delivery_id: str | None = None) -> Response:
    parsed = _parse_job_id(job_id)
    job = job_queries.get_job(session, job_id=parsed, for_update=True) if parsed else None
    if job is None:
        return _see_other("/admin/jobs")
    try:
        if action == "cancel":
            cancel_job_now(session, job)
        elif action == "retry":
            retry_job_now(session, job)
        else:
            assert delivery_id is not None
            redeliver_event(session, job, delivery_id)
    except DomainError as exc:
        session.rollback()
        return _see_other(f"/admin/jobs/{job.id}?{urlencode({'error': exc.message})}")
    return _see_other(f"/admin/jobs/{job.id}")


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: str, form: AdminFormDep, session: SessionDep) -> Response:
    """Cancel the job now, or as soon as its running stage notices."""
    return _job_action(session, job_id, "cancel")


@router.post("/jobs/{job_id}/retry")
def retry_job(job_id: str, form: AdminFormDep, session: SessionDep) -> Response:
    """Queue a failed or canceled job again from its first unfinished stage."""
    return _job_action(session, job_id, "retry")


@router.post("/jobs/{job_id}/deliveries/{delivery_id}/redeliver")
def redeliver_webhook(job_id: str, delivery_id: str, form: AdminFormDep, session: SessionDep) -> Response:
    """Deliver one webhook event again, on a fresh retry schedule."""
    return _job_action(session, job_id, "redeliver", delivery_id)


def _tenants_page(
    request: Request, admin: AdminSession, session: Session, settings: Settings, status_code: int = 200, **extra: Any
) -> HTMLResponse:
    keys: dict[uuid.UUID, list[ApiKey]] = {}
    for key in tenant_queries.list_api_keys(session):
        keys.setdefault(key.tenant_id, []).append(key)
    return _render(
        request,
        "tenants.html",
        admin,
        status_code=status_code,
        tenants=tenant_queries.list_tenants(session),
        keys=keys,
        default_rpm=settings.default_requests_per_minute,
        default_in_flight=settings.default_max_jobs_in_flight,
        default_max_priority=settings.default_max_priority,
        **extra,
    )


@router.get("/tenants", response_class=HTMLResponse)
def list_tenants(request: Request, admin: AdminSessionDep, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    """Tenants with their quotas, jobs in flight and keys; forms to add, revoke and limit."""
    return _tenants_page(request, admin, session, settings)


@router.post("/tenants", response_class=HTMLResponse)
def create_tenant(request: Request, form: AdminFormDep, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    """Create a tenant (or use an existing one) and a new API key for it, shown once."""
    name = form.fields.get("name", "").strip()
    if not name or len(name) > 100:
        return _tenants_page(
            request, form.session, session, settings, status_code=422, error="A tenant name needs 1 to 100 characters."
        )
    tenant = tenant_queries.get_or_create_tenant(session, name=name)
    row, key = tenant_queries.create_api_key(session, tenant=tenant, is_admin=form.fields.get("admin") == "on")
    session.commit()
    return _render(request, "key_created.html", form.session, tenant=name, key=key, row=row)


@router.post("/keys/{key_id}/revoke")
def revoke_key(key_id: str, form: AdminFormDep, session: SessionDep) -> Response:
    """Revoke an API key: it fails authentication here at once, in the other API processes within
    ``IMAGEN_API_KEY_CACHE_S``."""
    try:
        key = session.get(ApiKey, uuid.UUID(key_id))
    except ValueError:
        key = None
    if key is not None and key.revoked_at is None:
        tenant_queries.revoke_api_key(session, key=key)
        session.commit()
        forget_key(key.key_hash)
    return _see_other("/admin/tenants")


def _quota_value(raw: str) -> int | None:
    """A quota field: blank is the deployment's default, else a whole number (0 or less: unlimited)."""
    raw = raw.strip()
    return parse_quota(raw) if raw else None


@router.post("/tenants/{name}/quota", response_class=HTMLResponse)
def update_quota(
    request: Request, name: str, form: AdminFormDep, session: SessionDep, settings: SettingsDep
) -> Response:
    """Set a tenant's requests per minute, jobs in flight (blank: the default, 0: unlimited) and priority ceiling."""
    tenant = tenant_queries.get_tenant(session, name=name)
    if tenant is None:
        return _see_other("/admin/tenants")
    try:
        rpm = _quota_value(form.fields.get("requests_per_minute", ""))
        in_flight = _quota_value(form.fields.get("max_jobs_in_flight", ""))
        raw_ceiling = form.fields.get("max_priority", "").strip()
        ceiling = parse_priority_ceiling(raw_ceiling) if raw_ceiling else None
    except ValueError:
        return _tenants_page(
            request,
            form.session,
            session,
            settings,
            status_code=422,
            error=f"Quotas are whole numbers up to {MAX_QUOTA} (0 for unlimited), a priority ceiling is 0 to"
            f" {MAX_PRIORITY}; blank takes the default.",
        )
    tenant_queries.set_quota(
        session, tenant=tenant, requests_per_minute=rpm, max_jobs_in_flight=in_flight, max_priority=ceiling
    )
    session.commit()
    return _see_other("/admin/tenants")
