"""Embeddings for search: one row per indexed image, vectors in pgvector.

The HNSW indexes are partial, one per (model, dim), and are created when a model first indexes
something (db.search.ensure_vector_index): a migration cannot know which embedders will run.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 01:23:52.436328
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import Vector
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "embeddings",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("collection", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("embedding", Vector(), nullable=False),
        sa.Column("text_embedding", Vector(), nullable=True),
        sa.Column("job_id", sa.UUID(), nullable=False),
        sa.Column("image_key", sa.String(length=512), nullable=False),
        sa.Column("caption", sa.Text(), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("metadata", postgresql.JSONB(astext_type=sa.Text()), server_default="{}", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_embeddings_job_id_jobs"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_embeddings_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_embeddings")),
        sa.UniqueConstraint(
            "job_id", "image_key", "collection", name=op.f("uq_embeddings_job_id_image_key_collection")
        ),
    )
    op.create_index(op.f("ix_embeddings_job_id"), "embeddings", ["job_id"], unique=False)
    op.create_index("ix_embeddings_scope", "embeddings", ["tenant_id", "collection", "model", "dim"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_embeddings_scope", table_name="embeddings")
    op.drop_index(op.f("ix_embeddings_job_id"), table_name="embeddings")
    op.drop_table("embeddings")
