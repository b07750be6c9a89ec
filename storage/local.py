"""LocalObjectStore: objects as files under a folder, served by the API through signed URLs."""

import errno
import mimetypes
import os
import tempfile
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

from storage.errors import ObjectNotFound, StoreError, StoreUnavailable
from storage.keys import validate_key, validate_prefix
from storage.object_store import validate_ttl
from storage.signature import sign, verify_signature

# Keys may not start a segment with a dot, so these names never collide with an object.
_TMP_PREFIX = ".tmp-"
_KEY_CONFLICTS = (errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ENOTEMPTY)


class LocalObjectStore:
    """An ObjectStore whose objects are the files ``root/<key>``; they outlive the process.

    Writes go to a temporary file in the target folder and are moved into place with ``os.replace``,
    so a killed worker leaves at most an orphaned ``.tmp-*`` file, never a half-written object.
    Presigned URLs point at ``{base_url}/files/{key}``, a route of the API that checks them with
    ``verify_signature`` (or ``LocalObjectStore.verify``) and serves ``file_path(key)``.
    """

    def __init__(self, root: Path, base_url: str, secret: bytes) -> None:
        if not secret:
            raise ValueError("secret must be non-empty: it signs the download URLs")
        self._root = Path(root)
        self._base_url = base_url.rstrip("/")
        self._secret = secret

    def __repr__(self) -> str:
        return f"LocalObjectStore({str(self._root)!r}, base_url={self._base_url!r})"

    @property
    def root(self) -> Path:
        """The folder that holds the objects."""
        return self._root

    def ensure_bucket(self) -> None:
        """Create the root folder if it is missing."""
        try:
            self._root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreUnavailable(f"cannot create object folder {self._root}: {err}") from err

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Write ``data`` to ``root/<key>`` atomically and durably.

        The content type is not recorded: ``content_type(key)`` derives it from the key's extension.
        """
        path = self._path(key)
        try:
            tmp = self._temporary_file_beside(path)
            try:
                with open(tmp, "wb") as file:
                    file.write(data)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            _fsync_folder(path.parent)
        except OSError as err:
            if err.errno in _KEY_CONFLICTS:
                raise StoreError(f"key {key!r} conflicts with an existing object or folder in {self._root}") from err
            raise StoreUnavailable(f"cannot write {key!r} under {self._root}: {err}") from err

    def get(self, key: str) -> bytes:
        """The bytes stored under ``key``; raises ObjectNotFound."""
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(key) from None
        except OSError as err:
            raise StoreUnavailable(f"cannot read {key!r} under {self._root}: {err}") from err

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        return self._path(key).is_file()

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with ``prefix`` (and the folders left empty)."""
        validate_prefix(prefix)
        # S3 prefixes are plain string prefixes ("jobs/ab" matches "jobs/abc/0.png"), so walk the
        # deepest folder the prefix names in full and compare keys as strings.
        folder = prefix.rpartition("/")[0]
        start = self._root.joinpath(*folder.split("/")) if folder else self._root
        if not start.is_dir():
            return 0
        deleted = 0
        try:
            for dirpath, _dirnames, filenames in os.walk(start, topdown=False):
                here = Path(dirpath)
                for name in filenames:
                    key = (here / name).relative_to(self._root).as_posix()
                    if key.startswith(prefix):
                        (here / name).unlink(missing_ok=True)
                        if not name.startswith(_TMP_PREFIX):  # orphans of killed writers are not objects
                            deleted += 1
                if here != self._root and f"{here.relative_to(self._root).as_posix()}/".startswith(prefix):
                    _remove_if_empty(here)
        except OSError as err:
            raise StoreUnavailable(f"cannot delete {prefix!r} under {self._root}: {err}") from err
        return deleted

    def list_keys(self, prefix: str, *, modified_before: datetime, limit: int) -> list[str]:
        """Up to ``limit`` keys under ``prefix`` whose file was last written before ``modified_before``."""
        validate_prefix(prefix)
        folder = prefix.rpartition("/")[0]
        start = self._root.joinpath(*folder.split("/")) if folder else self._root
        before = modified_before.timestamp()
        keys: list[str] = []
        try:
            for dirpath, _dirnames, filenames in os.walk(start):
                here = Path(dirpath)
                for name in filenames:
                    key = (here / name).relative_to(self._root).as_posix()
                    if name.startswith(_TMP_PREFIX) or not key.startswith(prefix):
                        continue
                    if (here / name).stat().st_mtime < before:
                        keys.append(key)
                        if len(keys) >= limit:
                            return keys
        except FileNotFoundError:
            pass  # deleted while listed
        except OSError as err:
            raise StoreUnavailable(f"cannot list {prefix!r} under {self._root}: {err}") from err
        return keys

    def presigned_url(self, key: str, ttl_s: int) -> str:
        """``{base_url}/files/{key}?expires=<unix time>&signature=<hex HMAC-SHA256>``."""
        validate_key(key)
        expires = int(time.time()) + validate_ttl(ttl_s)
        signature = sign(key, expires, self._secret)
        return f"{self._base_url}/files/{quote(key, safe='/')}?expires={expires}&signature={signature}"

    def verify(self, key: str, expires: int, signature: str, now: float | None = None) -> bool:
        """Whether a URL this store presigned for ``key`` is authentic and unexpired."""
        return verify_signature(key, expires, signature, self._secret, now)

    def ping(self) -> None:
        """Return if the root folder exists and is writable; else raise StoreUnavailable."""
        if not self._root.is_dir():
            raise StoreUnavailable(f"object folder {self._root} does not exist")
        if not os.access(self._root, os.W_OK | os.X_OK):
            raise StoreUnavailable(f"object folder {self._root} is not writable")

    def file_path(self, key: str) -> Path:
        """The file that holds ``key`` (to stream it); raises ObjectNotFound when there is none."""
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(key)
        return path

    @staticmethod
    def content_type(key: str) -> str:
        """The media type to serve ``key`` with, from its extension."""
        guessed, _encoding = mimetypes.guess_type(key, strict=False)
        return guessed or "application/octet-stream"

    def _path(self, key: str) -> Path:
        return self._root.joinpath(*validate_key(key).split("/"))

    def _temporary_file_beside(self, path: Path) -> str:
        """Create an empty temporary file in ``path``'s folder, creating the folder as needed."""
        for _attempt in range(3):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TMP_PREFIX)
            except FileNotFoundError:
                continue  # a concurrent delete_prefix removed the folder we just made
            os.close(fd)
            return tmp
        raise StoreUnavailable(f"the folder of {path} keeps disappearing")


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (ignored where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError as err:
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
            raise
