"""Experiments: an eval run stored as data (dataset, arms, rows, summary).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 19:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out, as in 0007: migrations never import the models they migrate from.
JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("dataset_name", sa.Text(), nullable=False),
        sa.Column("dataset_sha256", sa.String(length=64), nullable=False),
        sa.Column("problems", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("parent_experiment_id", sa.String(length=32), nullable=True),
        sa.Column("settings", JSON_TYPE, nullable=False),
        sa.Column("params", JSON_TYPE, nullable=True),
        sa.Column("summary", JSON_TYPE, nullable=False),
        sa.ForeignKeyConstraint(
            ["parent_experiment_id"],
            ["experiments.id"],
            name=op.f("fk_experiments_parent_experiment_id_experiments"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiments")),
    )
    op.create_index(
        "ix_experiments_tenant_created", "experiments", ["tenant", "created_at"], unique=False
    )
    op.create_table(
        "experiment_arms",
        sa.Column("experiment_id", sa.String(length=32), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("spec", JSON_TYPE, nullable=False),
        sa.Column("params", JSON_TYPE, nullable=False),
        sa.Column("roles", JSON_TYPE, nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_experiment_arms_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("experiment_id", "position", name=op.f("pk_experiment_arms")),
    )
    op.create_table(
        "experiment_rows",
        sa.Column("experiment_id", sa.String(length=32), nullable=False),
        sa.Column("arm", sa.Integer(), nullable=False),
        sa.Column("problem_index", sa.Integer(), nullable=False),
        sa.Column("problem_id", sa.String(length=256), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("correct", sa.Boolean(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("cost", sa.Float(), nullable=False),
        sa.Column("difficulty", sa.Float(), nullable=True),
        sa.Column("data", JSON_TYPE, nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_experiment_rows_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_experiment_rows_job_id_jobs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint(
            "experiment_id", "arm", "problem_index", name=op.f("pk_experiment_rows")
        ),
    )
    op.create_index(op.f("ix_experiment_rows_job_id"), "experiment_rows", ["job_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_experiment_rows_job_id"), table_name="experiment_rows")
    op.drop_table("experiment_rows")
    op.drop_table("experiment_arms")
    op.drop_index("ix_experiments_tenant_created", table_name="experiments")
    op.drop_table("experiments")
