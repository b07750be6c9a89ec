"""Storing and searching image embeddings with pgvector. The caller owns the transaction."""

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from db.models import Embedding

_INDEX_LOCK_ID = 0x1A6F


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def vector_index_name(model: str, dim: int) -> str:
    """The name of the partial HNSW index of one embedder's vectors."""
    return f"ix_embeddings_hnsw_{hashlib.sha1(model.encode()).hexdigest()[:12]}_{int(dim)}"


def ensure_vector_index(session: Session, *, model: str, dim: int) -> None:
    """Create the HNSW index (cosine) for ``model``'s ``dim``-sized vectors if it does not exist.

    An HNSW index needs a fixed dimension; the column has none (presets differ), so each (model, dim)
    gets a partial index over ``embedding::vector(dim)``. Searches use the same expression.
    """
    session.execute(select(func.pg_advisory_xact_lock(_INDEX_LOCK_ID)))
    session.execute(
        text(
            f"CREATE INDEX IF NOT EXISTS {vector_index_name(model, dim)} ON embeddings "
            f"USING hnsw ((embedding::vector({int(dim)})) vector_cosine_ops) "
            f"WHERE model = {_literal(model)} AND dim = {int(dim)}"
        )
    )


def upsert_embedding(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    job_id: uuid.UUID,
    collection: str,
    model: str,
    embedding: list[float],
    image_key: str,
    text_embedding: list[float] | None = None,
    caption: str | None = None,
    text_value: str | None = None,
    meta: dict[str, Any] | None = None,
) -> uuid.UUID:
    """Insert (or, for a redelivered stage, refresh) the row of one indexed image; its id."""
    values = dict(
        tenant_id=tenant_id,
        job_id=job_id,
        collection=collection,
        model=model,
        dim=len(embedding),
        embedding=embedding,
        text_embedding=text_embedding,
        image_key=image_key,
        caption=caption,
        text=text_value,
        meta=meta or {},
    )
    insert_row = insert(Embedding).values(id=uuid.uuid4(), **values)
    upsert = insert_row.on_conflict_do_update(
        index_elements=["job_id", "image_key", "collection"],
        # ``excluded`` speaks column names: the ``meta`` attribute is the ``metadata`` column.
        set_={
            name: insert_row.excluded[name]
            for name in ("model", "dim", "embedding", "text_embedding", "caption", "text", "metadata")
        },
    ).returning(Embedding.id)
    return uuid.UUID(str(session.scalar(upsert)))


@dataclass(frozen=True)
class SearchHit:
    id: uuid.UUID
    score: float
    job_id: uuid.UUID
    image_key: str
    caption: str | None
    text: str | None
    meta: dict[str, Any]


def search_embeddings(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    collection: str,
    model: str,
    query: list[float],
    k: int,
    use_index: bool = True,
) -> list[SearchHit]:
    """The ``k`` images nearest to ``query`` (cosine), best first; only this tenant's, model's and size's."""
    dim = len(query)
    vector = f"embedding::vector({dim})"
    if use_index:
        # Filtering by tenant and collection after an approximate scan could return fewer than k rows;
        # iterative scans keep reading the index until k rows pass the filter, in exact order.
        session.execute(text("SET LOCAL hnsw.iterative_scan = strict_order"))
    else:
        session.execute(text("SET LOCAL enable_indexscan = off"))
    rows = session.execute(
        text(
            f"SELECT id, job_id, image_key, caption, text, metadata, "
            f"1 - ({vector} <=> CAST(:query AS vector({dim}))) AS score "
            f"FROM embeddings WHERE model = {_literal(model)} AND dim = {dim} "
            f"AND tenant_id = :tenant_id AND collection = :collection "
            f"ORDER BY {vector} <=> CAST(:query AS vector({dim})) LIMIT :k"
        ),
        {"query": str(list(query)), "tenant_id": tenant_id, "collection": collection, "k": k},
    )
    return [
        SearchHit(
            id=r.id,
            score=float(r.score),
            job_id=r.job_id,
            image_key=r.image_key,
            caption=r.caption,
            text=r.text,
            meta=r.metadata or {},
        )
        for r in rows
    ]
