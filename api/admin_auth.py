"""The admin dashboard's session cookie and CSRF tokens, both HMACs under the project's signing secret.

The cookie names an API key and an expiry; each request checks again that the key is live and admin, so
revoking the key ends its sessions. Every form carries a CSRF token derived from the session token.
"""

import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import Depends, HTTPException, Request, Response
from sqlalchemy.orm import Session

from api.deps import SessionDep, SettingsDep
from core.config import Settings
from db.models import ApiKey
from storage.secret import signing_secret

COOKIE_NAME = "imagen_admin"
SESSION_TTL_S = 12 * 3600
CSRF_FIELD = "csrf"
LOGIN_PATH = "/admin/login"


@dataclass(frozen=True)
class AdminSession:
    """A signed-in admin: their key, the cookie's token, and the CSRF token forms must carry."""

    key: ApiKey
    token: str
    csrf: str


@dataclass(frozen=True)
class AdminForm:
    """A POSTed admin form whose CSRF token checked out."""

    session: AdminSession
    fields: dict[str, str]


def _sign(secret: bytes, purpose: str, message: str) -> str:
    return hmac.new(secret, f"{purpose}:{message}".encode(), hashlib.sha256).hexdigest()


def session_token(settings: Settings, key_id: uuid.UUID, *, now: float | None = None) -> str:
    """``<key id>.<expiry (unix s)>.<hmac>``: who signed in, and until when."""
    expires = int((now if now is not None else time.time()) + SESSION_TTL_S)
    body = f"{key_id}.{expires}"
    return f"{body}.{_sign(signing_secret(settings), 'admin-session', body)}"


def csrf_token(settings: Settings, token: str) -> str:
    """The CSRF token of a session: only someone who can read the page (same origin) learns it."""
    return _sign(signing_secret(settings), "admin-csrf", token)


def _key_id_of(settings: Settings, token: str) -> uuid.UUID | None:
    """The key id a well-signed, unexpired token names, else None."""
    key_id, _, rest = token.partition(".")
    expires, _, signature = rest.partition(".")
    expected = _sign(signing_secret(settings), "admin-session", f"{key_id}.{expires}")
    if not _same(signature, expected):
        return None
    try:
        if int(expires) < time.time():
            return None
        return uuid.UUID(key_id)
    except ValueError:
        return None


def set_session_cookie(response: Response, request: Request, token: str) -> None:
    """Send the session cookie: HttpOnly, SameSite=Strict, Secure over https, scoped to /admin."""
    response.set_cookie(
        COOKIE_NAME,
        token,
        max_age=SESSION_TTL_S,
        path="/admin",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear_session_cookie(response: Response) -> None:
    """Forget the session cookie."""
    response.delete_cookie(COOKIE_NAME, path="/admin", httponly=True, samesite="strict")


def current_admin(request: Request, session: Session, settings: Settings) -> AdminSession | None:
    """The signed-in admin, if the cookie is valid and its key still live and admin."""
    token = request.cookies.get(COOKIE_NAME)
    if not token:
        return None
    key_id = _key_id_of(settings, token)
    if key_id is None:
        return None
    key = session.get(ApiKey, key_id)
    if key is None or key.revoked_at is not None or not key.is_admin:
        return None
    return AdminSession(key=key, token=token, csrf=csrf_token(settings, token))


def _require_admin(request: Request, session: SessionDep, settings: SettingsDep) -> AdminSession:
    admin = current_admin(request, session, settings)
    if admin is None:
        # A page for people: send them to the form, not a JSON error.
        raise HTTPException(status_code=303, detail="sign in first", headers={"Location": LOGIN_PATH})
    return admin


async def read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body, each field's first value."""
    body = (await request.body()).decode("utf-8", errors="replace")
    return {name: values[0] for name, values in parse_qs(body, keep_blank_values=True).items()}


def _checked_form(
    admin: Annotated[AdminSession, Depends(_require_admin)],
    fields: Annotated[dict[str, str], Depends(read_form)],
) -> AdminForm:
    if not _same(fields.get(CSRF_FIELD, ""), admin.csrf):
        raise HTTPException(status_code=403, detail="missing or wrong CSRF token; reload the page and try again")
    return AdminForm(session=admin, fields=fields)


AdminSessionDep = Annotated[AdminSession, Depends(_require_admin)]
AdminFormDep = Annotated[AdminForm, Depends(_checked_form)]


def _same(given: str, expected: str) -> bool:
    """A constant-time comparison that takes any text a client sends (compare_digest refuses non-ASCII str)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())
