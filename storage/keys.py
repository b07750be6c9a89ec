"""Object keys: the rules every store enforces, and the layout of ARCHITECTURE.md section 3."""

import re
from uuid import UUID, uuid4

from storage.errors import InvalidKey

MAX_KEY_LENGTH = 1024

# Plain segments only: no "." or "..", no leading dot (the local store names its temporary files
# ".tmp-..."), nothing a URL path or a file system would reinterpret.
_SEGMENT = re.compile(r"[A-Za-z0-9_=-][A-Za-z0-9._=-]*")


def validate_key(key: str) -> str:
    """Return ``key`` if it is a relative, slash-separated path of plain segments; else raise InvalidKey."""
    if not isinstance(key, str) or not key:
        raise InvalidKey(f"key must be a non-empty string, got {key!r}")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(f"key is {len(key)} characters long; at most {MAX_KEY_LENGTH} are allowed")
    for segment in key.split("/"):
        if not _SEGMENT.fullmatch(segment):
            raise InvalidKey(
                f"key {key!r} has segment {segment!r}; segments are non-empty, use only letters, digits"
                " and . _ = -, and do not start with a dot (so no '..' and no absolute paths)"
            )
    return key


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a non-empty start of a valid key (a trailing '/' is allowed)."""
    if not isinstance(prefix, str) or not prefix:
        raise InvalidKey(f"prefix must be a non-empty string (an empty one matches every key), got {prefix!r}")
    validate_key(prefix.removesuffix("/"))
    return prefix


def job_prefix(job_id: UUID | str) -> str:
    """The prefix under which every object of one job lives."""
    return validate_prefix(f"jobs/{job_id}/")


def image_key(job_id: UUID | str, stage: str, index: int, extension: str = "png") -> str:
    """The key of one image a job's stage produced: ``jobs/{job_id}/{stage}/{index}.png`` (a final image in
    another format ends in that format's extension)."""
    if index < 0:
        raise InvalidKey(f"index must be >= 0, got {index}")
    return validate_key(f"jobs/{job_id}/{stage}/{index}.{extension}")


def stage_prefix(job_id: UUID | str, stage: str) -> str:
    """The prefix under which one stage of a job stores its images."""
    return validate_prefix(f"jobs/{job_id}/{stage}/")


def embeddings_prefix(job_id: UUID | str) -> str:
    """The prefix of a job's prompt embeddings."""
    return validate_prefix(f"jobs/{job_id}/text/")


def embeddings_key(job_id: UUID | str) -> str:
    """The key of a job's prompt embeddings: ``jobs/{job_id}/text/embeds.safetensors``."""
    return validate_key(f"jobs/{job_id}/text/embeds.safetensors")


def upload_key(sha256: str) -> str:
    """The key of a client-supplied image, addressed by the hex SHA-256 of its bytes."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise InvalidKey(f"sha256 must be 64 lowercase hex digits, got {sha256!r}")
    return f"{UPLOADS_PREFIX}{sha256}"


UPLOADS_PREFIX = "uploads/"
QUERIES_PREFIX = "queries/"


def query_image_key() -> str:
    """A fresh key for a search's example image: kept only while the search runs."""
    return f"{QUERIES_PREFIX}{uuid4().hex}"
