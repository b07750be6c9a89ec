"""The request that submitted each job, so that every stage's log lines and traces lead back to it.

The API records the request id (the client's ``X-Request-ID``, or one it made up) on the job, and, when
tracing is on, the W3C ``traceparent`` of its span; every message that sends the job on (the next stage,
the sweeper's resend, a batch companion's next stage) carries the job's own, not the sender's.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 19:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("request_id", sa.String(64), nullable=True))
    op.add_column("jobs", sa.Column("traceparent", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "traceparent")
    op.drop_column("jobs", "request_id")
