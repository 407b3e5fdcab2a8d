"""One eval or one replay of an eval, start to finish: jobs, checkpoints, outputs.

``results.json`` is rewritten after each strategy finishes, and everything (report and
plots too) is written when the run ends — normally, on Ctrl-C (the partial results,
marked ``interrupted``) or on an unexpected error — before the exception goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from core.errors import InvalidInput
from evals.arms import Arm, changed_label, split_overrides
from evals.backends import Backend
from evals.dataset import Dataset
from evals.difficulty import (
    ProbeSettings,
    probe_problems,
    record,
    replay_probes,
    settings_of,
    signal_of,
)
from evals.experiments import ExperimentStore
from evals.harness import NoProgress, Progress, matched_budget, replay_arm, run_arm
from evals.report import write_all, write_results
from evals.results import EvalRun, Row, summary_from_json


@dataclass
class Options:
    out: Path
    name: str
    backend: str = "in-process"
    """How jobs ran, for the report: ``in-process (pools: …)`` or the server's URL."""
    concurrency: int = 1
    budget_tokens: int | None = None
    match_budget: bool = False
    pilot: int = 5
    """Problems in the ``--match-budget`` pilot."""
    seed: int = 0
    difficulty: ProbeSettings | None = None
    """Probe each problem's difficulty first (``evals.difficulty``); None: no signal."""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class _Recorder:
    """Stores a run as an experiment: created on the first ``flush``, then each flush
    stores the rows not stored yet (a run without a store records nothing)."""

    def __init__(
        self,
        store: ExperimentStore | None,
        run: EvalRun,
        parent_id: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> None:
        self.store, self.run, self.parent_id, self.params = store, run, parent_id, params
        self.stored: set[tuple[str, int]] = set()

    async def flush(self, *, interrupted: bool = False) -> None:
        if self.store is None:
            return
        if self.run.experiment_id is None:
            self.run.experiment_id = await self.store.create(
                self.run, parent_id=self.parent_id, params=self.params
            )
        rows = [r for r in self.run.rows if (r.strategy, r.problem_index) not in self.stored]
        if rows or interrupted:
            await self.store.save_rows(self.run.experiment_id, rows, interrupted=interrupted)
        self.stored |= {(r.strategy, r.problem_index) for r in rows}


@asynccontextmanager
async def _always_written(run: EvalRun, out: Path, recorder: _Recorder) -> AsyncIterator[None]:
    """Every output is written however the run ends; an unfinished one says so."""
    try:
        yield
    except (asyncio.CancelledError, Exception):
        run.interrupted = True
        write_all(run, out)
        # What finished is stored too; a failing store must not hide the first error.
        with contextlib.suppress(Exception):
            await recorder.flush(interrupted=True)
        raise
    await recorder.flush()
    write_all(run, out)


async def evaluate(
    backend: Backend,
    dataset: Dataset,
    arms: Sequence[Arm],
    options: Options,
    progress: Progress | None = None,
    store: ExperimentStore | None = None,
) -> EvalRun:
    """Run every problem of ``dataset`` through every arm; write OUT/*; store the run as
    an experiment in ``store`` (its id in ``run.experiment_id``); return the run."""
    progress = progress or NoProgress()
    problems = dataset.problems
    budget: dict[str, Any] = {}
    rule = None
    if options.budget_tokens is not None:
        budget, rule = {"max_tokens": options.budget_tokens}, "--budget-tokens"
    run = EvalRun(
        name=options.name,
        created_at=now(),
        arms=list(arms),
        problems=len(problems),
        settings={
            "dataset": str(dataset.path),
            "dataset_sha256": dataset.sha256,
            "backend": options.backend,
            "budget": budget or None,
            "budget_rule": rule,
            "seed": options.seed,
            "concurrency": options.concurrency,
        },
        bad_lines=[{"line": b.line, "reason": b.reason} for b in dataset.bad_lines],
    )
    recorder = _Recorder(store, run)
    signal = None
    async with _always_written(run, options.out, recorder):
        if options.difficulty is not None:
            # First, so every row is stored with its problem's bin; the settings (stored
            # with the experiment when it is created) carry each problem's probe.
            probed = await probe_problems(
                backend, problems, options.difficulty, seed=options.seed,
                concurrency=options.concurrency, progress=progress,
            )  # fmt: skip
            run.settings["difficulty"] = record(options.difficulty, probed)
            signal = signal_of(probed)
        if options.match_budget:
            budget = await _pilot(backend, run, problems[: options.pilot], options, progress)
        await recorder.flush()  # the experiment exists (and shows) while it runs
        for arm in arms:
            await run_arm(
                backend, arm, problems, run.rows, budget=budget, seed=options.seed,
                concurrency=options.concurrency, progress=progress, signal=signal,
            )  # fmt: skip
            write_results(run, options.out)
            await recorder.flush()
    return run


async def _pilot(
    backend: Backend,
    run: EvalRun,
    problems: Sequence[Any],
    options: Options,
    progress: Progress,
) -> dict[str, Any]:
    """``--match-budget``: run the first problems unbudgeted, then fix the budget."""
    rows: list[Row] = []
    pilot_arms = [Arm(f"pilot: {a.label}", a.spec, a.params, a.roles) for a in run.arms]
    for arm in pilot_arms:
        await run_arm(
            backend, arm, problems, rows, budget={}, seed=options.seed,
            concurrency=options.concurrency, progress=progress,
        )  # fmt: skip
    tokens, means = matched_budget(pilot_arms, rows)
    run.pilot = {
        "problems": len(problems),
        "mean_tokens": {label.removeprefix("pilot: "): m for label, m in means.items()},
        "budget_tokens": tokens,
        "rows": [asdict(r) for r in sorted(rows, key=lambda r: (r.strategy, r.problem_index))],
    }
    if tokens < 1:
        raise InvalidInput(
            "the --match-budget pilot spent no tokens (did every job fail?); "
            "set the budget with --budget-tokens",
            field="match_budget",
        )
    budget = {"max_tokens": tokens}
    run.settings["budget"] = budget
    run.settings["budget_rule"] = (
        f"--match-budget: the largest mean completion tokens of any strategy on a pilot of "
        f"the first {len(problems)} problems without a budget, rounded up"
    )
    return budget


def replay_plan(
    previous: dict[str, Any], changes: Sequence[tuple[str, Any]]
) -> tuple[list[Arm], dict[str, dict[str, Any]], list[Row]]:
    """The earlier eval's arms, the changes per arm label, and its rows."""
    arms = [
        Arm(s["label"], s["spec"], s["params"], frozenset(s.get("roles", [])))
        for s in previous["strategies"]
    ]
    rows = [Row.from_json(r) for r in previous["rows"]]
    return arms, split_overrides(arms, changes), rows


async def replay(
    backend: Backend,
    previous: dict[str, Any],
    source: Path | str,
    changes: Sequence[tuple[str, Any]],
    options: Options,
    progress: Progress | None = None,
    store: ExperimentStore | None = None,
    what_if: Literal["strict", "live"] = "live",
) -> EvalRun:
    """Re-run an eval from its journals: strict per arm unless ``changes`` touch it; the
    changed arms run in mode ``what_if``. Stored as an experiment whose parent is the
    replayed one (``previous["experiment_id"]``), when known."""
    progress = progress or NoProgress()
    arms, per_arm, parents = replay_plan(previous, changes)
    missing = await backend.missing([r.job_id for r in parents if r.job_id is not None])
    if missing:
        raise InvalidInput(
            f"{len(missing)} jobs of {source} are unknown here (first: {missing[0]}); a replay "
            "needs the database (or server) the eval ran against",
            field="replay",
        )
    new_arms = []
    for arm in arms:
        change = per_arm.get(arm.label)
        if change:
            arm = Arm(
                changed_label(arm.label, change),
                {**arm.spec, **change},
                {**arm.params, **change},
                arm.roles,
            )
        new_arms.append(arm)
    run = EvalRun(
        name=options.name,
        created_at=now(),
        arms=new_arms,
        problems=int(previous.get("problems", 0)),
        settings={
            **previous.get("settings", {}),
            "backend": options.backend,
            "concurrency": options.concurrency,
        },
        bad_lines=list(previous.get("bad_lines", [])),
        replay_of={
            "name": previous.get("name"),
            "results": str(source),
            "changes": per_arm,
            "experiment_id": previous.get("experiment_id"),
            "mode": {a.label: (what_if if per_arm.get(a.label) else "strict") for a in arms},
        },
        original=[summary_from_json(s) for s in previous.get("summary", [])],
    )
    params = {"pairs": [[k, v] for k, v in changes], "by_arm": per_arm, "mode": what_if}
    recorder = _Recorder(store, run, previous.get("experiment_id"), params if changes else None)
    probes = (previous.get("settings") or {}).get("difficulty") or {}
    signal = None
    async with _always_written(run, options.out, recorder):
        if probes.get("problems"):
            # The probes are replayed strictly whatever -p says: the bins stay the same.
            probed = await replay_probes(
                backend, probes["problems"], concurrency=options.concurrency, progress=progress
            )
            run.settings["difficulty"] = record(settings_of(probes), probed)
            signal = signal_of(probed)
        await recorder.flush()
        for arm, new_arm in zip(arms, new_arms, strict=True):
            await replay_arm(
                backend, new_arm.label, [r for r in parents if r.strategy == arm.label],
                run.rows, overrides=per_arm.get(arm.label, {}),
                concurrency=options.concurrency, progress=progress, what_if=what_if,
                signal=signal,
            )  # fmt: skip
            write_results(run, options.out)
            await recorder.flush()
    return run
