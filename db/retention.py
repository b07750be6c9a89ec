"""Deleting what finished jobs stored: a job its tenant deletes, and what the retention settings let go.

A deletion has two halves. The rows go first, in the transaction that marks the job deleted: its index
entries, artifact rows and stage outputs, so no client sees or searches them from the commit on. The
objects go second (the job's prefix, and its upload unless another job uses it) and ``purged_at`` records
that they did. A store that fails between the two leaves the tombstone unpurged: the sweeper finds it by
``ix_jobs_unpurged`` and deletes the objects again (deleting is idempotent), so nothing is ever orphaned.

The caller owns the transaction, as everywhere in ``db/``.
"""

import uuid
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.orm import Session

from core.job_input import GenerateSpec
from core.presets import get_preset
from core.routing import ENCODE_TEXT
from db.jobs import now, referenced_upload_keys
from db.models import Artifact, Embedding, Job
from storage.keys import UPLOADS_PREFIX, embeddings_prefix, job_prefix, stage_prefix
from storage.object_store import ObjectStore


def mark_deleted(session: Session, job: Job) -> None:
    """Make a finished job a tombstone: its index entries, artifact rows and outputs go; the row stays."""
    if job.deleted_at is not None:
        return
    artifact_keys = list(session.scalars(select(Artifact.key).where(Artifact.job_id == job.id)))
    # Index jobs that indexed one of this job's images (an artifact input) show it in search results.
    image_key = Job.input["image"]["key"].astext
    indexers = select(Job.id).where(Job.input.has_key("image"), image_key.in_(artifact_keys))
    session.execute(
        delete(Embedding).where(
            or_(
                Embedding.job_id == job.id,
                and_(Embedding.job_id.in_(indexers), Embedding.image_key.in_(artifact_keys)),
            )
        )
    )
    session.execute(delete(Artifact).where(Artifact.job_id == job.id))
    for stage in job.stages:
        stage.outputs = []
    job.deleted_at = now()


def purge_objects(session: Session, job: Job, store: ObjectStore, *, upload_grace_s: float) -> None:
    """Delete every object a deleted job stored and record that they are gone; raises StoreError before.

    Its upload goes too when no other job refers to it and no request wrote it for ``upload_grace_s`` (a
    submission of the same bytes writes it again before it commits its job); else the unused-uploads sweep
    deletes it once it is that old.
    """
    assert job.deleted_at is not None, "only a deleted job's objects are purged"
    store.delete_prefix(job_prefix(job.id))
    upload = owned_upload(session, job)
    if upload is not None:
        before = now() - timedelta(seconds=upload_grace_s)
        if store.list_keys(upload, modified_before=before, limit=1) == [upload]:
            store.delete_prefix(upload)  # a whole key: it matches only itself
    job.purged_at = now()


def owned_upload(session: Session, job: Job) -> str | None:
    """The key of the client upload the job read, if no other job that is not deleted reads it too."""
    image = job.input.get("image")
    key = image.get("key") if isinstance(image, dict) else None
    if not isinstance(key, str) or not key.startswith(UPLOADS_PREFIX):
        return None  # no image, or another job's artifact: that job's to delete
    others = referenced_upload_keys(session, keys=[key], except_job=job.id)
    return None if key in others else key


def purge_intermediates(session: Session, job: Job, store: ObjectStore) -> None:
    """Delete a finished job's non-final images and prompt embeddings, objects first, then their rows and
    the keys in its stage outputs (the sizes and seeds stay); raises StoreError with the rows untouched."""
    names = intermediate_stages(job)
    for name in names:
        store.delete_prefix(embeddings_prefix(job.id) if name == ENCODE_TEXT else stage_prefix(job.id, name))
    if names:
        session.execute(delete(Artifact).where(Artifact.job_id == job.id, Artifact.stage.in_(names)))
    for stage in job.stages:
        if stage.name in names:
            stage.outputs = [{k: v for k, v in output.items() if k != "key"} for output in stage.outputs]
    job.intermediates_purged_at = now()


def intermediate_stages(job: Job) -> list[str]:
    """The stages whose outputs only the job's next stages read: the text encoder and every cascade stage
    before the final one (caption and index jobs have none)."""
    if job.kind != "generate":
        return []
    spec = GenerateSpec.model_validate(job.input)
    cascade = get_preset(job.preset).stages_up_to(spec.resolution)
    return [ENCODE_TEXT, *(stage.name for stage in cascade[:-1])]


def unpurged_job_ids(session: Session, *, limit: int) -> list[uuid.UUID]:
    """Deleted jobs whose objects a failed store left behind, the oldest deletion first."""
    query = (
        select(Job.id).where(Job.deleted_at.is_not(None), Job.purged_at.is_(None)).order_by(Job.deleted_at).limit(limit)
    )
    return list(session.scalars(query))


def kept_job_ids(session: Session, *, finished_before: datetime, limit: int) -> list[uuid.UUID]:
    """Finished jobs not deleted that ended before ``finished_before``, the oldest first."""
    query = (
        select(Job.id)
        .where(Job.finished_at.is_not(None), Job.deleted_at.is_(None), Job.finished_at < finished_before)
        .order_by(Job.finished_at)
        .limit(limit)
    )
    return list(session.scalars(query))


def job_ids_with_intermediates(session: Session, *, finished_before: datetime, limit: int) -> list[uuid.UUID]:
    """Finished jobs, not deleted, that still hold their intermediates and ended before ``finished_before``."""
    query = (
        select(Job.id)
        .where(
            Job.finished_at.is_not(None),
            Job.deleted_at.is_(None),
            Job.intermediates_purged_at.is_(None),
            Job.finished_at < finished_before,
        )
        .order_by(Job.finished_at)
        .limit(limit)
    )
    return list(session.scalars(query))


def lock_job(session: Session, job_id: uuid.UUID) -> Job | None:
    """The job, locked for update, or None when another transaction holds it (it is left for later)."""
    query = select(Job).where(Job.id == job_id).with_for_update(skip_locked=True)
    return session.scalar(query.execution_options(populate_existing=True))
