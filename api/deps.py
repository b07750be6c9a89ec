"""Dependencies as Annotated aliases, so handler signatures read like sentences.

FastAPI runs each plain ``def`` dependency in its threadpool, a thread switch each way; those that do no I/O
here are ``async def``, and the caller's key and rate limit are settled in one hop, so a request makes as few
switches as it can.
"""

import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api import quotas
from api.callers import Caller, find_caller
from core.config import Settings, get_settings
from core.errors import Forbidden, NotFound, Unauthorized
from db import jobs as job_queries
from db.models import Job
from db.session import new_session, reading_scope
from storage.factory import process_store
from storage.object_store import ObjectStore


async def _session() -> AsyncIterator[Session]:
    session = new_session()  # connects only when first used, in the handler's thread
    try:
        yield session
    finally:
        if session.in_transaction():
            # Closing rolls the transaction back on the server: blocking I/O, kept off the event loop.
            await run_in_threadpool(session.close)
        else:
            session.close()


async def _settings() -> Settings:
    return get_settings()


async def _store() -> ObjectStore:
    if process_store.cache_info().currsize:
        return process_store()  # built by the app's lifespan: no I/O
    return await run_in_threadpool(process_store)


# Documents the scheme in OpenAPI (so /docs can "Authorize"); it never answers itself: a missing or malformed
# header is found by _bearer_token below, which answers in the contract's error body.
_bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    bearerFormat="API key",
    description="`Authorization: Bearer <api key>`; a key belongs to one tenant",
)
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)]


def _bearer_token(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'", field="Authorization")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <key>'", field="Authorization")
    return token.strip()


def _authenticated(request: Request, settings: Settings) -> Caller:
    caller = find_caller(_bearer_token(request), ttl_s=settings.api_key_cache_s)
    if caller is None:
        raise Unauthorized("the API key is not valid (unknown or revoked)", field="Authorization")
    return caller


def _rate_limited_caller(
    request: Request, settings: Annotated[Settings, Depends(_settings)], _: BearerCredentials
) -> Caller:
    """The caller, once its tenant's requests per minute allow this request (else a 429)."""
    caller = _authenticated(request, settings)
    quotas.enforce_rate_limit(caller.tenant, settings=settings)
    return caller


def _admin_caller(request: Request, settings: Annotated[Settings, Depends(_settings)], _: BearerCredentials) -> Caller:
    caller = _authenticated(request, settings)
    if not caller.is_admin:
        raise Forbidden("this needs an admin API key", field="Authorization")
    return caller


def _job_id(job_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(job_id)
    except ValueError:
        raise NotFound(f"no job {job_id!r}", field="job_id") from None


def _found(job: Job | None, job_id: str) -> Job:
    if job is None:
        raise NotFound(f"no job {job_id!r}", field="job_id")
    return job


def _find_job(session: Session, job_id: str, caller: Caller, *, for_update: bool) -> Job:
    job = job_queries.get_job(session, job_id=_job_id(job_id), tenant_id=caller.tenant_id, for_update=for_update)
    return _found(job, job_id)


def _job_snapshot(job_id: str, caller: Annotated[Caller, Depends(_rate_limited_caller)]) -> Job:
    """The caller's job and its stages, read in one query and a transaction of its own, detached from it."""
    with reading_scope() as session:
        job = job_queries.get_job_with_stages(session, job_id=_job_id(job_id), tenant_id=caller.tenant_id)
    return _found(job, job_id)


def _job(
    job_id: str,
    caller: Annotated[Caller, Depends(_rate_limited_caller)],
    session: Annotated[Session, Depends(_session)],
) -> Job:
    """The caller's job named in the path; another tenant's job is a 404, as an unknown one is."""
    return _find_job(session, job_id, caller, for_update=False)


def _locked_job(
    job_id: str,
    caller: Annotated[Caller, Depends(_rate_limited_caller)],
    session: Annotated[Session, Depends(_session)],
) -> Job:
    """The caller's job named in the path, locked for update until the request's transaction ends."""
    return _find_job(session, job_id, caller, for_update=True)


SessionDep = Annotated[Session, Depends(_session)]
StoreDep = Annotated[ObjectStore, Depends(_store)]
SettingsDep = Annotated[Settings, Depends(_settings)]
CurrentKey = Annotated[Caller, Depends(_rate_limited_caller)]
AdminKey = Annotated[Caller, Depends(_admin_caller)]
CurrentJob = Annotated[Job, Depends(_job)]
JobSnapshot = Annotated[Job, Depends(_job_snapshot)]
LockedJob = Annotated[Job, Depends(_locked_job)]
