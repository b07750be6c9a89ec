"""Signed, expiring download URLs for the local object store (HMAC-SHA256 of key and expiry)."""

import hashlib
import hmac
import time


def sign(key: str, expires: int, secret: bytes) -> str:
    """The hex HMAC-SHA256 of ``key`` and the unix time ``expires``, under ``secret``."""
    # Keys never contain a newline, so "key\nexpires" cannot be read two ways.
    message = f"{key}\n{expires}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def verify_signature(key: str, expires: int, signature: str, secret: bytes, now: float | None = None) -> bool:
    """Whether ``signature`` was made by ``sign(key, expires, secret)`` and ``expires`` has not passed."""
    if now is None:
        now = time.time()
    if expires < now:
        return False
    expected = sign(key, expires, secret).encode()
    return hmac.compare_digest(expected, signature.encode("utf-8", "replace"))
