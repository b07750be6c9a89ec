"""The secret that signs local download URLs: IMAGEN_SECRET_KEY, or one kept in data_dir."""

import contextlib
import os
import secrets
import tempfile
from pathlib import Path

from core.config import Settings

SECRET_FILE_NAME = "secret.key"


def signing_secret(settings: Settings) -> bytes:
    """``settings.secret_key`` if set, else the key in ``data_dir/secret.key`` (created on first use)."""
    if settings.secret_key:
        return settings.secret_key.encode()
    return read_or_create_secret(settings.data_dir / SECRET_FILE_NAME)


def read_or_create_secret(path: Path) -> bytes:
    """The secret kept in ``path``; the first process to get here creates it (mode 0600).

    The new secret is written to a private temporary file and hard-linked into place: a link never
    replaces an existing file, so racing processes all end up reading the one that won, complete.
    """
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_hex(32) + "\n")
            file.flush()
            os.fsync(file.fileno())
        with contextlib.suppress(FileExistsError):  # another process won the race: use its secret
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    text = path.read_text().strip()
    if not text:
        raise ValueError(f"{path} is empty: delete it to make a new secret, or set IMAGEN_SECRET_KEY")
    return text.encode()
