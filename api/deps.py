"""Dependencies as Annotated aliases, so handler signatures read like sentences."""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from api import quotas
from core.config import Settings, get_settings
from core.errors import Forbidden, Unauthorized
from db import tenants
from db.models import ApiKey
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


SessionDep = Annotated[Session, Depends(_session)]
StoreDep = Annotated[ObjectStore, Depends(_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
CurrentKey = Annotated[ApiKey, Depends(_rate_limited_key)]
AdminKey = Annotated[ApiKey, Depends(_admin_key)]
