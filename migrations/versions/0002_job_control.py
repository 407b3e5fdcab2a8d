"""Job control: priority, the worker's lease and heartbeat, cancel requests, re-enqueues.

Revision ID: 0002
Revises: 0003
Create Date: 2026-11-22 05:10:00.000000

Columns only, all nullable or with a server default, so existing rows stay valid and the
upgrade is an in-place ALTER on PostgreSQL (batch mode on SQLite).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
# 0003 (the API's request hash) was written in parallel and reached the tree first; as
# its docstring agreed, the later of the two points at the other, keeping one history.
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("priority", sa.String(length=8), server_default="default", nullable=False)
        )
        batch.add_column(sa.Column("worker", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch.add_column(sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("enqueued_at")
        batch.drop_column("cancel_requested_at")
        batch.drop_column("heartbeat_at")
        batch.drop_column("worker")
        batch.drop_column("priority")
