"""Repository functions for experiments: every SQL statement about stored eval runs.

An experiment's rows travel in the eval's row form (``evals.results.Row`` as a dict:
``problem_id``, ``problem_index``, ``job_id``, ``status``, ``correct``,
``completion_tokens``, ``latency_s``, ``cost``, ...). The columns hold what is filtered,
drawn and summed; ``data`` keeps the rest, so the row form comes back whole.

Functions take a session and never commit: the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.db.models import Experiment, ExperimentArm, ExperimentRow, Job

COLUMNS = ("problem_id", "problem_index", "job_id", "status", "correct", "cost", "difficulty")
"""Row-form keys stored in columns of their own (besides tokens and latency)."""


async def create_experiment(
    session: AsyncSession,
    *,
    tenant: str,
    name: str,
    dataset_name: str,
    dataset_sha256: str,
    problems: int,
    settings: dict[str, Any],
    arms: Sequence[Mapping[str, Any]],
    params: dict[str, Any] | None = None,
    parent_experiment_id: str | None = None,
) -> Experiment:
    """An experiment and its arms (``label``, ``spec``, ``params``, ``roles`` each), in
    order: an arm's position is its index in ``arms``."""
    experiment = Experiment(
        tenant=tenant,
        name=name,
        dataset_name=dataset_name,
        dataset_sha256=dataset_sha256,
        problems=problems,
        settings=settings,
        params=params,
        parent_experiment_id=parent_experiment_id,
        summary={},
    )
    session.add(experiment)
    await session.flush()
    for position, arm in enumerate(arms):
        session.add(
            ExperimentArm(
                experiment_id=experiment.id,
                position=position,
                label=str(arm["label"]),
                spec=dict(arm["spec"]),
                params=dict(arm["params"]),
                roles=sorted(arm.get("roles", [])),
            )
        )
    await session.flush()
    return experiment


async def get_experiment(
    session: AsyncSession, experiment_id: str, tenant: str
) -> Experiment | None:
    """Only if it belongs to ``tenant``: another tenant's experiment does not exist."""
    experiment = await session.get(Experiment, experiment_id)
    return experiment if experiment is not None and experiment.tenant == tenant else None


async def find_by_prefix(session: AsyncSession, prefix: str, tenant: str) -> list[Experiment]:
    """The tenant's experiments whose id starts with ``prefix`` (at most two)."""
    query = select(Experiment).where(Experiment.tenant == tenant, Experiment.id.startswith(prefix))
    return list((await session.execute(query.limit(2))).scalars())


async def list_experiments(
    session: AsyncSession,
    tenant: str,
    *,
    limit: int,
    before: tuple[datetime, str] | None = None,
) -> Sequence[Experiment]:
    """Newest first; ``before`` is the keyset cursor ``(created_at, id)``, as for jobs."""
    query = select(Experiment).where(Experiment.tenant == tenant)
    if before is not None:
        created, experiment_id = before
        query = query.where(
            or_(
                Experiment.created_at < created,
                and_(Experiment.created_at == created, Experiment.id < experiment_id),
            )
        )
    query = query.order_by(Experiment.created_at.desc(), Experiment.id.desc()).limit(limit)
    return (await session.execute(query)).scalars().all()


async def list_arms(session: AsyncSession, experiment_id: str) -> Sequence[ExperimentArm]:
    query = select(ExperimentArm).where(ExperimentArm.experiment_id == experiment_id)
    return (await session.execute(query.order_by(ExperimentArm.position))).scalars().all()


async def arms_of(
    session: AsyncSession, experiment_ids: Sequence[str]
) -> dict[str, list[ExperimentArm]]:
    """The arms of several experiments in one query, by experiment."""
    found: dict[str, list[ExperimentArm]] = {i: [] for i in experiment_ids}
    if not found:
        return found
    query = (
        select(ExperimentArm)
        .where(ExperimentArm.experiment_id.in_(list(found)))
        .order_by(ExperimentArm.experiment_id, ExperimentArm.position)
    )
    for arm in (await session.execute(query)).scalars():
        found[arm.experiment_id].append(arm)
    return found


async def list_rows(session: AsyncSession, experiment_id: str) -> Sequence[ExperimentRow]:
    query = (
        select(ExperimentRow)
        .where(ExperimentRow.experiment_id == experiment_id)
        .order_by(ExperimentRow.arm, ExperimentRow.problem_index)
    )
    return (await session.execute(query)).scalars().all()


async def save_rows(
    session: AsyncSession, experiment_id: str, rows: Iterable[tuple[int, Mapping[str, Any]]]
) -> int:
    """Store ``(arm position, row form)`` pairs; a row already stored for the same arm and
    problem is replaced (a retried request stores each row once). Returns the count."""
    items = list(rows)
    by_arm: dict[int, list[int]] = {}
    for arm, row in items:
        by_arm.setdefault(arm, []).append(int(row["problem_index"]))
    for arm, indices in by_arm.items():
        await session.execute(
            delete(ExperimentRow).where(
                ExperimentRow.experiment_id == experiment_id,
                ExperimentRow.arm == arm,
                ExperimentRow.problem_index.in_(indices),
            )
        )
    session.add_all(_row(experiment_id, arm, row) for arm, row in items)
    await session.flush()
    return len(items)


def _row(experiment_id: str, arm: int, row: Mapping[str, Any]) -> ExperimentRow:
    data = {
        k: v
        for k, v in row.items()
        # latency_s stays in data too: seconds -> ms -> seconds would not round-trip.
        if k not in COLUMNS and k not in ("completion_tokens", "strategy")
    }
    if "cost" in row and row["cost"] is None:
        data["cost_known"] = False  # a pool without prices: the column's 0 means nothing
    return ExperimentRow(
        experiment_id=experiment_id,
        arm=arm,
        problem_index=int(row["problem_index"]),
        problem_id=str(row["problem_id"]),
        job_id=row.get("job_id"),
        status=str(row["status"]),
        correct=bool(row["correct"]),
        tokens=int(row.get("completion_tokens", 0)),
        latency_ms=float(row.get("latency_s", 0.0)) * 1000,
        cost=float(row.get("cost") or 0.0),  # unknown (None): 0 here, None in data
        difficulty=row.get("difficulty"),
        data=data,
    )


def row_form(row: ExperimentRow, label: str) -> dict[str, Any]:
    """A stored row back in the eval's row form, under its arm's ``label``."""
    return {
        **row.data,
        "problem_id": row.problem_id,
        "problem_index": row.problem_index,
        "strategy": label,
        "job_id": row.job_id,
        "status": row.status,
        "correct": row.correct,
        "completion_tokens": row.tokens,
        "latency_s": row.data.get("latency_s", row.latency_ms / 1000),
        "cost": None if row.data.get("cost_known") is False else row.cost,
        "difficulty": row.difficulty,
    }


async def set_summary(
    session: AsyncSession, experiment: Experiment, summary: dict[str, Any]
) -> None:
    experiment.summary = summary
    await session.flush()


async def foreign_jobs(session: AsyncSession, job_ids: Iterable[str], tenant: str) -> set[str]:
    """Those of ``job_ids`` that are not ``tenant``'s jobs (unknown, or another's)."""
    wanted = set(job_ids)
    if not wanted:
        return set()
    query = select(Job.id).where(Job.id.in_(wanted), Job.tenant == tenant)
    return wanted - set((await session.execute(query)).scalars())
