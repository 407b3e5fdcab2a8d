"""Where an eval is stored as an experiment: this process's database, or a Ponder server.

``ponder eval`` creates the experiment (dataset, arms, settings, a replay's parent and
what-if parameters) before the first job, stores each arm's rows when the arm finishes
(as ``results.json`` is rewritten), and the rows still unstored when it is interrupted.
The summary per arm is computed from the stored rows by ``stored_summary`` — the numbers
of ``results.json`` and the report, computed by the same code — on both sides: the
server recomputes it, it never takes a client's word for it.

A stored experiment loads back in ``results.json``'s form, so ``--replay EXPERIMENT_ID``
and ``--replay RESULTS.json`` share one path (``evals.runs.replay``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.db import experiments as repo
from core.db.models import Experiment
from core.errors import InvalidInput, NotFound
from evals.arms import Arm
from evals.results import FORMAT, EvalRun, Row
from ponder_client import AsyncPonderClient, PonderAPIError
from ponder_client._base import Call, check, seg

ROWS_PER_REQUEST = 200
"""Rows per ``POST /v1/experiments/{id}/rows``: well under the API's 1 MiB body limit."""


class ExperimentStore(Protocol):
    async def create(
        self, run: EvalRun, *, parent_id: str | None = None, params: dict[str, Any] | None = None
    ) -> str:
        """Store the experiment and its arms (no rows yet); its id."""

    async def save_rows(
        self, experiment_id: str, rows: Sequence[Row], *, interrupted: bool = False
    ) -> None:
        """Store rows (a row stored before for its arm and problem is replaced) and
        recompute the summary."""

    async def load(self, experiment_id: str) -> dict[str, Any]:
        """A stored experiment in ``results.json``'s form, with its ``experiment_id``."""


def arm_of(data: Mapping[str, Any]) -> Arm:
    return Arm(str(data["label"]), dict(data["spec"]), dict(data["params"]),
               frozenset(data.get("roles", [])))  # fmt: skip


def arm_json(arm: Arm) -> dict[str, Any]:
    return {"label": arm.label, "spec": arm.spec, "params": arm.params, "roles": sorted(arm.roles)}


def stored_summary(
    arms: Sequence[Arm], rows: Sequence[Mapping[str, Any]], *, problems: int, interrupted: bool
) -> dict[str, Any]:
    """``{"arms": [summary per arm, as in results.json], "calls", "interrupted"}``."""
    run = EvalRun(name="", created_at="", arms=list(arms), problems=problems, settings={},
                  rows=[Row.from_json(dict(r)) for r in rows], interrupted=interrupted)  # fmt: skip
    data = run.to_json()
    return {"arms": data["summary"], "calls": data["calls"], "interrupted": interrupted}


def dataset_fields(run: EvalRun) -> tuple[str, str]:
    """(name, sha256) of the run's dataset; the full path stays in ``settings``."""
    path = str(run.settings.get("dataset") or "")
    return (Path(path).name if path else ""), str(run.settings.get("dataset_sha256") or "")


async def store_rows(
    session: AsyncSession,
    experiment: Experiment,
    rows: Sequence[Mapping[str, Any]],
    *,
    interrupted: bool,
    field: str = "rows",
) -> None:
    """Rows in the eval's form (``strategy`` names the arm), stored; the summary
    recomputed from every stored row. An unknown arm is bad input naming the row."""
    arms = await repo.list_arms(session, experiment.id)
    position = {a.label: a.position for a in arms}
    pairs = []
    for i, row in enumerate(rows):
        if row["strategy"] not in position:
            raise InvalidInput(
                f"{field}.{i}.strategy: {row['strategy']!r} is not an arm of this experiment",
                field=f"{field}.{i}.strategy",
            )
        pairs.append((position[row["strategy"]], row))
    await repo.save_rows(session, experiment.id, pairs)
    labels = {a.position: a.label for a in arms}
    stored = [repo.row_form(r, labels[r.arm]) for r in await repo.list_rows(session, experiment.id)]
    summary = stored_summary(
        [arm_of({"label": a.label, "spec": a.spec, "params": a.params, "roles": a.roles})
         for a in arms],
        stored, problems=experiment.problems, interrupted=interrupted,
    )  # fmt: skip
    await repo.set_summary(session, experiment, summary)


async def load_stored(session: AsyncSession, experiment: Experiment) -> dict[str, Any]:
    arms = await repo.list_arms(session, experiment.id)
    labels = {a.position: a.label for a in arms}
    rows = [repo.row_form(r, labels[r.arm]) for r in await repo.list_rows(session, experiment.id)]
    return {
        "format": FORMAT,
        "experiment_id": experiment.id,
        "name": experiment.name,
        "problems": experiment.problems,
        "settings": experiment.settings,
        "bad_lines": [],
        "strategies": [
            {"label": a.label, "spec": a.spec, "params": a.params, "roles": a.roles} for a in arms
        ],
        "summary": experiment.summary.get("arms", []),
        "rows": rows,
    }


class LocalStore:
    """Experiments in this process's database, under ``tenant`` (the CLI's jobs are
    tenant ``default``'s, as ``ponder serve`` without keys shows them)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], tenant: str = "default") -> None:
        self.sessions, self.tenant = sessions, tenant

    async def create(
        self, run: EvalRun, *, parent_id: str | None = None, params: dict[str, Any] | None = None
    ) -> str:
        name, sha = dataset_fields(run)
        async with self.sessions() as session, session.begin():
            if parent_id and await repo.get_experiment(session, parent_id, self.tenant) is None:
                parent_id = None  # a results.json from another database: no link
            experiment = await repo.create_experiment(
                session, tenant=self.tenant, name=run.name, dataset_name=name,
                dataset_sha256=sha, problems=run.problems, settings=run.settings,
                arms=[arm_json(a) for a in run.arms], params=params,
                parent_experiment_id=parent_id,
            )  # fmt: skip
            await repo.set_summary(
                session, experiment,
                stored_summary(run.arms, [], problems=run.problems, interrupted=False),
            )  # fmt: skip
            return experiment.id

    async def save_rows(
        self, experiment_id: str, rows: Sequence[Row], *, interrupted: bool = False
    ) -> None:
        async with self.sessions() as session, session.begin():
            experiment = await self._get(session, experiment_id)
            await store_rows(
                session, experiment, [asdict(r) for r in rows], interrupted=interrupted
            )

    async def load(self, experiment_id: str) -> dict[str, Any]:
        async with self.sessions() as session:
            found = await repo.find_by_prefix(session, experiment_id, self.tenant)
            if len(found) != 1:
                what = "no experiment" if not found else "more than one experiment"
                raise InvalidInput(f"{what} with id {experiment_id!r}", field="replay")
            return await load_stored(session, found[0])

    async def _get(self, session: AsyncSession, experiment_id: str) -> Experiment:
        experiment = await repo.get_experiment(session, experiment_id, self.tenant)
        if experiment is None:
            raise NotFound(f"experiment {experiment_id} not found")
        return experiment


class RestStore:
    """Experiments on a Ponder server (``/v1/experiments``), through the eval's client."""

    def __init__(self, client: AsyncPonderClient) -> None:
        self.client = client

    async def _call(self, call: Call) -> Any:
        # The client's transport and key; ponder_client has no experiments methods yet.
        try:
            return check(await self.client._send(call)).json()
        except PonderAPIError as exc:
            where = f"{call.method} {call.path}"
            if exc.status == 404:
                raise NotFound(f"{where}: {exc.message}") from None
            raise InvalidInput(
                f"{where}: HTTP {exc.status}: {exc.message}", field=exc.field
            ) from None

    async def create(
        self, run: EvalRun, *, parent_id: str | None = None, params: dict[str, Any] | None = None
    ) -> str:
        name, sha = dataset_fields(run)
        if parent_id:
            try:
                await self._call(Call("GET", f"/v1/experiments/{seg(parent_id)}"))
            except NotFound:
                parent_id = None  # a results.json from another server: no link
        body = {
            "name": run.name,
            "dataset": {"name": name, "sha256": sha},
            "problems": run.problems,
            "settings": run.settings,
            "arms": [arm_json(a) for a in run.arms],
            "params": params,
            "parent_experiment_id": parent_id,
        }
        created = await self._call(Call("POST", "/v1/experiments", json=body))
        return str(created["id"])

    async def save_rows(
        self, experiment_id: str, rows: Sequence[Row], *, interrupted: bool = False
    ) -> None:
        path = f"/v1/experiments/{seg(experiment_id)}/rows"
        chunks = [rows[i : i + ROWS_PER_REQUEST] for i in range(0, len(rows), ROWS_PER_REQUEST)]
        for i, chunk in enumerate(chunks or [[]]):
            last = i == len(chunks or [[]]) - 1
            body = {"rows": [_sent(r) for r in chunk], "interrupted": interrupted and last}
            await self._call(Call("POST", path, json=body))

    async def load(self, experiment_id: str) -> dict[str, Any]:
        try:
            experiment = await self._call(Call("GET", f"/v1/experiments/{seg(experiment_id)}"))
        except NotFound:
            raise InvalidInput(f"no experiment with id {experiment_id!r}", field="replay") from None
        grid = await self._call(Call("GET", f"/v1/experiments/{seg(experiment['id'])}/rows"))
        return {
            "format": FORMAT,
            "experiment_id": experiment["id"],
            "name": experiment["name"],
            "problems": experiment["problems"],
            "settings": experiment["settings"],
            "bad_lines": [],
            "strategies": [
                {k: a[k] for k in ("label", "spec", "params", "roles")} for a in experiment["arms"]
            ],
            # The API's summary leaves out what the arm already says (label, spec).
            "summary": [
                {**a["summary"], "strategy": a["label"], "spec": a["spec"]}
                for a in experiment["arms"]
                if a["summary"] is not None
            ],
            "rows": _with_bins(
                [{k: v for k, v in r.items() if k != "arm"} for r in grid["rows"]],
                experiment["settings"],
            ),
        }


def _sent(row: Row) -> dict[str, Any]:
    """A row as the API takes it: its row schema has the difficulty value but not the
    bin, which the experiment's ``settings.difficulty`` records per problem."""
    data = asdict(row)
    data.pop("difficulty_bin", None)
    return data


def _with_bins(rows: list[dict[str, Any]], settings: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows with their problem's difficulty bin, from ``settings.difficulty``'s probes."""
    probes = (settings.get("difficulty") or {}).get("problems") or []
    bins = {int(p["problem_index"]): p.get("bin") for p in probes}
    for row in rows:
        if row.get("difficulty_bin") is None and int(row["problem_index"]) in bins:
            row["difficulty_bin"] = bins[int(row["problem_index"])]
    return rows
