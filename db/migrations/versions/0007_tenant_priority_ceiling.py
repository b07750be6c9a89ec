"""A per-tenant ceiling on job priority: NULL takes the deployment's default (IMAGEN_DEFAULT_MAX_PRIORITY).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 13:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("tenants", sa.Column("max_priority", sa.Integer(), nullable=True))
    op.create_check_constraint(op.f("ck_tenants_max_priority_range"), "tenants", "max_priority BETWEEN 0 AND 9")


def downgrade() -> None:
    op.drop_constraint(op.f("ck_tenants_max_priority_range"), "tenants", type_="check")
    op.drop_column("tenants", "max_priority")
