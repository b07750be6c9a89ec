"""Webhook deliveries hold a lease instead of a row lock across their HTTP call.

``lease_token`` and ``lease_expires_at`` are NULL when no deliverer holds the event, which is what every
existing row means: nothing to backfill.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 12:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("webhook_events", sa.Column("lease_token", sa.Uuid(), nullable=True))
    op.add_column("webhook_events", sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("webhook_events", "lease_expires_at")
    op.drop_column("webhook_events", "lease_token")
