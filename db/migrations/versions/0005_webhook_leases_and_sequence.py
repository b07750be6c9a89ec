"""Webhook deliveries hold a lease instead of a row lock across their HTTP call, sign image URLs at each
attempt, and number each job's events.

``lease_token`` and ``lease_expires_at`` are NULL when no deliverer holds the event, which is what every
existing row means: nothing to backfill. ``image_keys`` is empty for existing events: their payloads keep
the URLs they were recorded with, and are sent as before.

Existing events are numbered 1, 2, 3, ... per job in the order they were recorded, and each job's
``webhook_seq`` set to its last number, before ``sequence`` becomes NOT NULL and unique per job. That
backfill rewrites every outbox row once, under the migration's lock: run it while the outbox is small
(delivered events of old jobs can be deleted first).

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
    op.add_column("jobs", sa.Column("webhook_seq", sa.Integer(), server_default=sa.text("0"), nullable=False))
    op.add_column("webhook_events", sa.Column("sequence", sa.Integer(), nullable=True))
    op.execute(
        """
        UPDATE webhook_events AS e SET sequence = n.sequence
        FROM (SELECT id, row_number() OVER (PARTITION BY job_id ORDER BY created_at, id) AS sequence
              FROM webhook_events) AS n
        WHERE e.id = n.id
        """
    )
    op.execute(
        """
        UPDATE jobs AS j SET webhook_seq = m.sequence
        FROM (SELECT job_id, max(sequence) AS sequence FROM webhook_events GROUP BY job_id) AS m
        WHERE j.id = m.job_id
        """
    )
    op.alter_column("webhook_events", "sequence", nullable=False)
    op.create_unique_constraint("uq_webhook_events_job_id_sequence", "webhook_events", ["job_id", "sequence"])


def downgrade() -> None:
    op.drop_constraint("uq_webhook_events_job_id_sequence", "webhook_events", type_="unique")
    op.drop_column("webhook_events", "sequence")
    op.drop_column("jobs", "webhook_seq")
    op.drop_column("webhook_events", "image_keys")
    op.drop_column("webhook_events", "lease_expires_at")
    op.drop_column("webhook_events", "lease_token")
