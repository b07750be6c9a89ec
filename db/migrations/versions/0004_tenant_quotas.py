"""Tenant quotas (requests per minute, jobs in flight) and the index that counts a tenant's live jobs.

NULL quotas take the deployment's defaults (IMAGEN_DEFAULT_*), so existing tenants need no backfill.
The index is built CONCURRENTLY, outside the migration's transaction: a plain CREATE INDEX would block
job submissions for as long as it scans the jobs table.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 02:18:41.650001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_IN_FLIGHT = sa.text("status IN ('queued', 'running')")


def upgrade() -> None:
    op.add_column("tenants", sa.Column("requests_per_minute", sa.Integer(), nullable=True))
    op.add_column("tenants", sa.Column("max_jobs_in_flight", sa.Integer(), nullable=True))
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_jobs_tenant_in_flight",
            "jobs",
            ["tenant_id"],
            unique=False,
            postgresql_where=_IN_FLIGHT,
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("ix_jobs_tenant_in_flight", table_name="jobs", postgresql_concurrently=True)
    op.drop_column("tenants", "max_jobs_in_flight")
    op.drop_column("tenants", "requests_per_minute")
