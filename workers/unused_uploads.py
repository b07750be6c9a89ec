"""Deletes stored client images that no job needs: uploads of refused submissions, or of jobs since
deleted, and search example images a crashed API left behind.

An upload is written again each time a request uses it (see ``api.images.store_upload``), so one older
than the grace time was not used by any request still in progress; if no job's input refers to it, nothing
ever will. Runs from the sweep, at most once per interval across every sweeper.
"""

import logging
from datetime import UTC, datetime, timedelta

from redis.exceptions import RedisError

from core.config import get_settings
from core.redis_client import get_redis
from db import jobs as job_queries
from db.session import session_scope
from storage.errors import StoreError
from storage.factory import process_store
from storage.keys import QUERIES_PREFIX, UPLOADS_PREFIX
from storage.object_store import ObjectStore

log = logging.getLogger(__name__)

_LAST_RUN_KEY = "imagen:unused-uploads-swept"
_BATCH = 1000


def delete_unused_uploads(store: ObjectStore, *, older_than_s: float, limit: int = _BATCH) -> int:
    """Delete uploads older than ``older_than_s`` that no job refers to, and search images as old; how many."""
    before = datetime.now(UTC) - timedelta(seconds=older_than_s)
    uploads = store.list_keys(UPLOADS_PREFIX, modified_before=before, limit=limit)
    with session_scope() as session:
        used = job_queries.referenced_upload_keys(session, keys=uploads)
    unused = [key for key in uploads if key not in used]
    unused += store.list_keys(QUERIES_PREFIX, modified_before=before, limit=limit)
    for key in unused:
        store.delete_prefix(key)  # a whole key: it matches only itself
    if unused:
        log.info("deleted %d stored images no job uses", len(unused))
    return len(unused)


def sweep_unused_uploads() -> int:
    """``delete_unused_uploads`` once per ``IMAGEN_UNUSED_UPLOAD_SWEEP_S`` across every sweeper; how many."""
    settings = get_settings()
    try:
        due = get_redis().set(_LAST_RUN_KEY, "1", nx=True, ex=max(1, int(settings.unused_upload_sweep_s)))
    except RedisError:
        return 0  # the jobs' sweep goes on; the uploads wait for the next one
    if not due:
        return 0
    try:
        return delete_unused_uploads(process_store(), older_than_s=settings.unused_upload_ttl_s)
    except StoreError as exc:
        log.warning("unused uploads not swept: %s", exc)
        return 0
