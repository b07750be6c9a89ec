"""Webhook deliveries hold a lease instead of a row lock across their HTTP call, and sign image URLs at
each attempt.

``lease_token`` and ``lease_expires_at`` are NULL when no deliverer holds the event, which is what every
existing row means: nothing to backfill. ``image_keys`` is empty for existing events: their payloads keep
the URLs they were recorded with, and are sent as before.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 12:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("webhook_events", sa.Column("lease_token", sa.Uuid(), nullable=True))
    op.add_column("webhook_events", sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "webhook_events",
        sa.Column("image_keys", postgresql.JSONB(astext_type=sa.Text()), server_default="[]", nullable=False),
    )


def downgrade() -> None:
    op.drop_column("webhook_events", "image_keys")
    op.drop_column("webhook_events", "lease_expires_at")
    op.drop_column("webhook_events", "lease_token")
