"""Entity tags for a job as clients see it, so that a client polling a job that has not changed gets a 304.

The tag is a digest of the job's and its stages' rows, not of the JSON body: the body carries presigned URLs
that are signed afresh on every read. The digest also names the current half of the URLs' lifetime, so a
client that keeps answering 304s with a body it stored is never left holding a URL that expired.
"""

import hashlib
import time
from typing import Any

from sqlalchemy import inspect

from db.models import Job, JobStage


def _column_keys(cls: type[Any]) -> tuple[str, ...]:
    return tuple(str(attr.key) for attr in inspect(cls).column_attrs)


_JOB_COLUMNS = _column_keys(Job)
_STAGE_COLUMNS = _column_keys(JobStage)


def _row_state(row: Any, keys: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(getattr(row, key) for key in keys)


def job_etag(job: Job, presign_ttl_s: int) -> str:
    """A weak tag (the bytes of the body differ by their signatures) for the job and its stages as loaded."""
    window = int(time.time() // max(1, presign_ttl_s // 2))
    state = (_row_state(job, _JOB_COLUMNS), [_row_state(stage, _STAGE_COLUMNS) for stage in job.stages], window)
    return f'W/"{hashlib.blake2b(repr(state).encode(), digest_size=16).hexdigest()}"'


def none_match(if_none_match: str | None, etag: str) -> bool:
    """Whether ``If-None-Match`` names ``etag`` (or is ``*``), compared weakly as RFC 9110 asks for GET."""
    if not if_none_match:
        return False
    opaque = etag.removeprefix("W/")
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == opaque:
            return True
    return False
