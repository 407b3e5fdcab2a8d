"""Breaker events: workers report their circuit breakers' openings and closings.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 06:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "breaker_events",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("role", sa.String(length=64), nullable=False),
        sa.Column("url", sa.String(length=512), nullable=False),
        sa.Column("worker", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_breaker_events")),
    )
    op.create_index(
        "ix_breaker_events_role_url_at", "breaker_events", ["role", "url", "at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_breaker_events_role_url_at", table_name="breaker_events")
    op.drop_table("breaker_events")
