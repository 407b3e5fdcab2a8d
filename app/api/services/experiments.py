"""A tenant's experiments: stored eval runs, listed, read as summaries and as a grid.

``ponder eval`` stores them in-process through ``evals.experiments.LocalStore``; against
a server (``--url``) it posts them here. Either way the summary per arm is computed from
the stored rows by ``evals.experiments.store_rows``, so the server never stores numbers a
client merely claims. A row may only name one of the tenant's own jobs.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from app.api.deps import ApiState
from app.api.experiment_schemas import (
    ArmOut,
    ArmSummary,
    Calls,
    DatasetRef,
    ExperimentCreate,
    ExperimentLinks,
    ExperimentOut,
    ExperimentRows,
    ProblemOut,
    RowOut,
    RowsCreate,
)
from app.api.services.jobs import decode_cursor
from core.db import experiments as repo
from core.db.models import Experiment, ExperimentArm
from core.errors import InvalidInput, NotFound
from core.specs import validate_spec
from evals.arms import Arm
from evals.experiments import store_rows, stored_summary


def experiment_out(experiment: Experiment, arms: Sequence[ExperimentArm]) -> ExperimentOut:
    summaries = experiment.summary.get("arms", [])
    base = f"/v1/experiments/{experiment.id}"
    return ExperimentOut(
        id=experiment.id,
        name=experiment.name,
        dataset=DatasetRef(name=experiment.dataset_name, sha256=experiment.dataset_sha256),
        problems=experiment.problems,
        created_at=experiment.created_at,
        parent_experiment_id=experiment.parent_experiment_id,
        settings=experiment.settings,
        params=experiment.params,
        interrupted=bool(experiment.summary.get("interrupted", False)),
        calls=Calls(**experiment.summary.get("calls", {})),
        arms=[
            ArmOut(
                position=a.position,
                label=a.label,
                spec=a.spec,
                params=a.params,
                roles=list(a.roles),
                summary=(
                    ArmSummary.model_validate(summaries[a.position])
                    if a.position < len(summaries)
                    else None
                ),
            )
            for a in arms
        ],
        links=ExperimentLinks(self=base, rows=f"{base}/rows"),
    )


async def get_experiment(session: AsyncSession, tenant: str, experiment_id: str) -> Experiment:
    experiment = await repo.get_experiment(session, experiment_id, tenant)
    if experiment is None:
        raise NotFound(f"experiment {experiment_id} not found")
    return experiment


async def read(session: AsyncSession, tenant: str, experiment_id: str) -> ExperimentOut:
    experiment = await get_experiment(session, tenant, experiment_id)
    return experiment_out(experiment, await repo.list_arms(session, experiment.id))


def encode_cursor(experiment: Experiment) -> str:
    raw = f"{experiment.created_at.isoformat()}|{experiment.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def list_experiments(
    session: AsyncSession, tenant: str, *, limit: int, cursor: str | None
) -> tuple[list[ExperimentOut], str | None]:
    before = decode_cursor(cursor) if cursor else None  # the jobs list's cursor format
    rows = list(await repo.list_experiments(session, tenant, limit=limit + 1, before=before))
    page = rows[:limit]
    arms = await repo.arms_of(session, [e.id for e in page])
    next_cursor = encode_cursor(page[-1]) if len(rows) > limit and page else None
    return [experiment_out(e, arms[e.id]) for e in page], next_cursor


def _check_arms(body: ExperimentCreate) -> None:
    seen: set[str] = set()
    for i, arm in enumerate(body.arms):
        if arm.label in seen:
            raise InvalidInput(
                f"arms.{i}.label: {arm.label!r} given twice", field=f"arms.{i}.label"
            )
        seen.add(arm.label)
        try:
            validate_spec(arm.params)
        except InvalidInput as exc:
            inner = (exc.field or "").removeprefix("strategy").lstrip(".")
            where = f"arms.{i}.params" + (f".{inner}" if inner else "")
            raise InvalidInput(f"{where}: {exc.message}", field=where) from None


async def create(state: ApiState, tenant: str, body: ExperimentCreate) -> ExperimentOut:
    _check_arms(body)
    arms = [a.model_dump() for a in body.arms]
    async with state.sessions() as session, session.begin():
        parent = body.parent_experiment_id
        if parent is not None and await repo.get_experiment(session, parent, tenant) is None:
            raise InvalidInput(
                f"parent_experiment_id: no experiment {parent}", field="parent_experiment_id"
            )
        experiment = await repo.create_experiment(
            session, tenant=tenant, name=body.name, dataset_name=body.dataset.name,
            dataset_sha256=body.dataset.sha256, problems=body.problems,
            settings=body.settings, arms=arms, params=body.params,
            parent_experiment_id=parent,
        )  # fmt: skip
        empty = stored_summary(
            [Arm(a["label"], a["spec"], a["params"], frozenset(a["roles"])) for a in arms],
            [], problems=body.problems, interrupted=False,
        )  # fmt: skip
        await repo.set_summary(session, experiment, empty)
        stored = await repo.list_arms(session, experiment.id)
        return experiment_out(experiment, stored)


async def add_rows(
    state: ApiState, tenant: str, experiment_id: str, body: RowsCreate
) -> ExperimentOut:
    rows = [r.model_dump() for r in body.rows]
    async with state.sessions() as session, session.begin():
        experiment = await get_experiment(session, tenant, experiment_id)
        for i, row in enumerate(rows):
            if experiment.problems and row["problem_index"] >= experiment.problems:
                where = f"rows.{i}.problem_index"
                raise InvalidInput(
                    f"{where}: {row['problem_index']} is not below the experiment's "
                    f"{experiment.problems} problems",
                    field=where,
                )
        foreign = await repo.foreign_jobs(
            session, [r["job_id"] for r in rows if r["job_id"]], tenant
        )
        for i, row in enumerate(rows):
            if row["job_id"] in foreign:
                where = f"rows.{i}.job_id"
                raise InvalidInput(f"{where}: no job {row['job_id']}", field=where)
        await store_rows(session, experiment, rows, interrupted=body.interrupted)
        return experiment_out(experiment, await repo.list_arms(session, experiment.id))


async def grid(session: AsyncSession, tenant: str, experiment_id: str) -> ExperimentRows:
    experiment = await get_experiment(session, tenant, experiment_id)
    arms = await repo.list_arms(session, experiment.id)
    labels = {a.position: a.label for a in arms}
    rows = []
    problems: dict[int, str] = {}
    for stored in await repo.list_rows(session, experiment.id):
        form = repo.row_form(stored, labels[stored.arm])
        known = set(RowOut.model_fields)
        rows.append(RowOut(arm=stored.arm, **{k: v for k, v in form.items() if k in known}))
        problems.setdefault(stored.problem_index, stored.problem_id)
    return ExperimentRows(
        experiment_id=experiment.id,
        arms=[a.label for a in arms],
        problems=[ProblemOut(index=i, id=p) for i, p in sorted(problems.items())],
        rows=rows,
    )
