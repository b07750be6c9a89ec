"""Dependencies as Annotated aliases, so handler signatures read like sentences."""

import uuid
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from api import quotas
from core.config import Settings, get_settings
from core.errors import Forbidden, NotFound, Unauthorized
from db import jobs as job_queries
from db import tenants
from db.models import ApiKey, Job
from db.session import new_session
from storage.factory import process_store
from storage.object_store import ObjectStore


def _session() -> Iterator[Session]:
    session = new_session()
    try:
        yield session
    finally:
        session.close()


def _store() -> ObjectStore:
    return process_store()


def _api_key(request: Request, session: Annotated[Session, Depends(_session)]) -> ApiKey:
    header = request.headers.get("authorization")
    if not header:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'", field="Authorization")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <key>'", field="Authorization")
    key = tenants.find_api_key(session, key=token.strip())
    if key is None:
        raise Unauthorized("the API key is not valid (unknown or revoked)", field="Authorization")
    return key


def _rate_limited_key(
    key: Annotated[ApiKey, Depends(_api_key)], settings: Annotated[Settings, Depends(get_settings)]
) -> ApiKey:
    """The caller's key, once its tenant's requests per minute allow this request (else a 429)."""
    quotas.enforce_rate_limit(key.tenant, settings=settings)
    return key


def _admin_key(key: Annotated[ApiKey, Depends(_api_key)]) -> ApiKey:
    if not key.is_admin:
        raise Forbidden("this needs an admin API key", field="Authorization")
    return key


def _find_job(session: Session, job_id: str, key: ApiKey, *, for_update: bool) -> Job:
    try:
        parsed = uuid.UUID(job_id)
    except ValueError:
        raise NotFound(f"no job {job_id!r}", field="job_id") from None
    job = job_queries.get_job(session, job_id=parsed, tenant_id=key.tenant_id, for_update=for_update)
    if job is None:
        raise NotFound(f"no job {job_id!r}", field="job_id")
    return job


def _job(
    job_id: str, key: Annotated[ApiKey, Depends(_rate_limited_key)], session: Annotated[Session, Depends(_session)]
) -> Job:
    """The caller's job named in the path; another tenant's job is a 404, as an unknown one is."""
    return _find_job(session, job_id, key, for_update=False)


def _locked_job(
    job_id: str, key: Annotated[ApiKey, Depends(_rate_limited_key)], session: Annotated[Session, Depends(_session)]
) -> Job:
    """The caller's job named in the path, locked for update until the request's transaction ends."""
    return _find_job(session, job_id, key, for_update=True)


SessionDep = Annotated[Session, Depends(_session)]
StoreDep = Annotated[ObjectStore, Depends(_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
CurrentKey = Annotated[ApiKey, Depends(_rate_limited_key)]
AdminKey = Annotated[ApiKey, Depends(_admin_key)]
CurrentJob = Annotated[Job, Depends(_job)]
LockedJob = Annotated[Job, Depends(_locked_job)]
