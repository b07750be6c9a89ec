"""The index through which the sweeper finds the uploads that jobs still refer to.

Caption and index jobs record their input image's key in ``input -> 'image' ->> 'key'``; an upload that
no job refers to is deleted once it is old enough. Built CONCURRENTLY, as 0004's index, so that it does
not block submissions while it scans the jobs table.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 13:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_jobs_input_image_key",
            "jobs",
            [sa.text("(input -> 'image' ->> 'key')")],
            unique=False,
            postgresql_where=sa.text("input ? 'image'"),
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("ix_jobs_input_image_key", table_name="jobs", postgresql_concurrently=True)
