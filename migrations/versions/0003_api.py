"""API: the request fingerprint that makes ``Idempotency-Key`` safe to reuse.

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-22 05:10:00

Numbered 0003 although it comes second: 0002 (job control: leases, heartbeats,
cancellation) was written in parallel and chained after this one, so the history stays
one line: 0001 -> 0003 -> 0002.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch mode: SQLite cannot ALTER most things in place; for an added nullable column
    # it is a plain ALTER TABLE on both backends anyway.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("request_hash", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("request_hash")
