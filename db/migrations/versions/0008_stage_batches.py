"""Stage runs that share a forward pass, and which dispatch generation completed each stage.

``batch_id`` is the stage id of the run that led the batch (every member carries it) and ``batch_size``
the images of that pass; ``completed_seq`` is the generation whose run completed the stage, which is the
one that sent the job on: a later message of the same generation stops there, one of a newer generation
sends the job on itself.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 15:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("job_stages", sa.Column("batch_id", sa.Uuid(), nullable=True))
    op.add_column("job_stages", sa.Column("batch_size", sa.Integer(), nullable=True))
    op.add_column("job_stages", sa.Column("completed_seq", sa.Integer(), nullable=True))
    # A worker gathering companions for a batch looks up the pending runs of one stage.
    op.create_index(
        "ix_job_stages_pending_name",
        "job_stages",
        ["name", "queued_at"],
        postgresql_where=sa.text("status = 'pending' AND queued_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_job_stages_pending_name", table_name="job_stages")
    op.drop_column("job_stages", "completed_seq")
    op.drop_column("job_stages", "batch_size")
    op.drop_column("job_stages", "batch_id")
