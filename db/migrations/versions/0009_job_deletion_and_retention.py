"""Deleted jobs stay as tombstones, and the sweeper enforces the retention settings.

``deleted_at``: the job was deleted (by its tenant, or by ``IMAGEN_RETAIN_OUTPUT_DAYS``); its row stays so
that its id is never used again. ``purged_at``: everything it stored is gone from the object store and the
database; a deletion the store interrupted has the first and not yet the second, and the sweeper finishes
it. ``intermediates_purged_at``: its non-final images and prompt embeddings are gone
(``IMAGEN_RETAIN_INTERMEDIATE_DAYS``).

Each sweep looks for a few jobs of each kind; the partial indexes hold only the rows still to visit, so
finding them costs the same however many jobs are kept. Built CONCURRENTLY, as 0006's index, so that
they do not block submissions while they scan the jobs table.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("jobs", sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("jobs", sa.Column("intermediates_purged_at", sa.DateTime(timezone=True), nullable=True))
    with op.get_context().autocommit_block():
        # Finished jobs that still hold everything (retention of outputs) or their intermediates.
        op.create_index(
            "ix_jobs_finished_kept",
            "jobs",
            ["finished_at"],
            postgresql_where=sa.text("finished_at IS NOT NULL AND deleted_at IS NULL"),
            postgresql_concurrently=True,
        )
        op.create_index(
            "ix_jobs_finished_with_intermediates",
            "jobs",
            ["finished_at"],
            postgresql_where=sa.text(
                "finished_at IS NOT NULL AND deleted_at IS NULL AND intermediates_purged_at IS NULL"
            ),
            postgresql_concurrently=True,
        )
        # Deletions the object store interrupted.
        op.create_index(
            "ix_jobs_unpurged",
            "jobs",
            ["deleted_at"],
            postgresql_where=sa.text("deleted_at IS NOT NULL AND purged_at IS NULL"),
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name in ("ix_jobs_unpurged", "ix_jobs_finished_with_intermediates", "ix_jobs_finished_kept"):
            op.drop_index(name, table_name="jobs", postgresql_concurrently=True)
    op.drop_column("jobs", "intermediates_purged_at")
    op.drop_column("jobs", "purged_at")
    op.drop_column("jobs", "deleted_at")
