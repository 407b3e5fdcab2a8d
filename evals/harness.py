"""Running an eval: every problem through every strategy, as ordinary jobs.

Strategies run one after another (so one strategy's latency is not inflated by
another's load), each with up to ``concurrency`` problems in flight. A job that fails,
or cannot be created, is a row marked incorrect with its error: one bad problem never
stops an eval. Rows are appended to the caller's list as jobs finish, so whatever has
finished is there to report when the run is interrupted.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal, Protocol

from evals.arms import Arm
from evals.backends import Backend, JobRecord
from evals.dataset import Problem
from evals.results import Row
from evals.stats import mean
from strategies.shared.answers import answers_equal


class Progress(Protocol):
    def start(self, label: str, total: int) -> None: ...

    def advance(self, label: str, correct: bool) -> None: ...


class NoProgress:
    def start(self, label: str, total: int) -> None:
        pass

    def advance(self, label: str, correct: bool) -> None:
        pass


def record_row(
    problem_id: str,
    index: int,
    label: str,
    expected: str,
    record: JobRecord,
    *,
    parent: Row | None = None,
    carry_latency: bool = False,
    strict: bool = False,
) -> Row:
    usage = record.usage
    by_role: dict[str, Any] = usage.get("by_role", {})
    wall = float(usage.get("wall_s", 0.0))
    answer = record.answer if record.status == "succeeded" else None
    return Row(
        problem_id=problem_id,
        problem_index=index,
        strategy=label,
        job_id=record.job_id,
        status=record.status,
        answer=answer,
        expected=expected,
        correct=answers_equal(answer, expected),
        tokens={r: int(u.get("completion_tokens", 0)) for r, u in sorted(by_role.items())},
        prompt_tokens={r: int(u.get("prompt_tokens", 0)) for r, u in sorted(by_role.items())},
        completion_tokens=int(usage.get("completion_tokens", 0)),
        calls=int(usage.get("calls", 0)),
        # A strict replay reproduces the computation, not its timing (journal hits take
        # no time): it keeps the original latency and records its own wall time apart.
        latency_s=parent.latency_s if (parent is not None and carry_latency) else wall,
        wall_s=wall if carry_latency else None,
        cost=None if record.cost is None else round(record.cost, 10),
        reasoning_tokens=int(usage.get("reasoning_tokens", 0)),
        # A strict replay calls nothing: a journal miss it refused is counted by the
        # runner's usage as a miss ("live_calls"), not as a call made.
        live_calls=0 if strict else int(usage.get("live_calls", 0)),
        replayed_calls=int(usage.get("journal_hits", 0)),
        budget_exhausted=record.budget_exhausted,
        error=record.error,
        parent_job_id=parent.job_id if parent is not None else None,
    )


def error_row(
    problem_id: str, index: int, label: str, expected: str, job_id: str | None, exc: Exception
) -> Row:
    message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
    return Row(
        problem_id=problem_id,
        problem_index=index,
        strategy=label,
        job_id=job_id,
        status="failed",
        answer=None,
        expected=expected,
        correct=False,
        tokens={},
        prompt_tokens={},
        completion_tokens=0,
        calls=0,
        latency_s=0.0,
        cost=0.0,
        error={"code": getattr(exc, "code", "eval_error"), "message": message},
    )


Signal = tuple[float | None, str | None]
"""A problem's difficulty value and bin."""


def _with_signal(row: Row, signal: Mapping[int, Signal] | None) -> Row:
    if signal is not None and row.problem_index in signal:
        row.difficulty, row.difficulty_bin = signal[row.problem_index]
    return row


async def bounded(concurrency: int, work: Sequence[Callable[[], Awaitable[None]]]) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(item: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            await item()

    # A TaskGroup: on Ctrl-C every in-flight job is cancelled *and awaited*, so each
    # ends as a saved `cancelled` job before the partial report is written.
    async with asyncio.TaskGroup() as group:
        for item in work:
            group.create_task(one(item))


async def run_arm(
    backend: Backend,
    arm: Arm,
    problems: Sequence[Problem],
    sink: list[Row],
    *,
    budget: dict[str, Any],
    seed: int,
    concurrency: int,
    progress: Progress,
    signal: Mapping[int, Signal] | None = None,
) -> None:
    """Every problem through one strategy; rows go to ``sink`` as they finish.

    Problem ``i`` gets seed ``seed + i`` under every strategy, so arms draw from the
    same per-problem random streams and a rerun with the same seed makes the same jobs.
    ``signal``: each problem's difficulty value and bin (``evals.difficulty``), put on
    its row.
    """
    progress.start(arm.label, len(problems))

    def work(problem: Problem) -> Callable[[], Awaitable[None]]:
        async def go() -> None:
            job_id: str | None = None
            try:
                job_id = await backend.submit(
                    problem.question, arm.spec, budget, seed + problem.index
                )
                record = await backend.run(job_id)
                row = record_row(problem.id, problem.index, arm.label, problem.answer, record)
            except Exception as exc:  # recorded in the row and the report, not swallowed
                row = error_row(problem.id, problem.index, arm.label, problem.answer, job_id, exc)
            sink.append(_with_signal(row, signal))
            progress.advance(arm.label, row.correct)

        return go

    await bounded(concurrency, [work(p) for p in problems])


def matched_budget(arms: Sequence[Arm], pilot_rows: Sequence[Row]) -> tuple[int, dict[str, float]]:
    """The token budget every strategy gets under ``--match-budget``.

    Rule: the largest mean completion tokens of any strategy on the pilot problems
    (run without a budget), rounded up. The most expensive strategy is thereby held to
    about what it spends on an average problem, and every cheaper one may spend as much.
    """
    means = {
        arm.label: mean([r.completion_tokens for r in pilot_rows if r.strategy == arm.label]) or 0.0
        for arm in arms
    }
    return math.ceil(max(means.values(), default=0.0)), means


async def replay_arm(
    backend: Backend,
    label: str,
    parents: Sequence[Row],
    sink: list[Row],
    *,
    overrides: dict[str, Any],
    concurrency: int,
    progress: Progress,
    what_if: Literal["strict", "live"] = "live",
    signal: Mapping[int, Signal] | None = None,
) -> None:
    """Replay one strategy's jobs: strict without ``overrides``, else what-ifs in mode
    ``what_if`` (strict: a call the journal lacks fails the row, nothing is called).

    A parent row without a job (it could not be created) is carried over unchanged.
    """
    mode: Literal["strict", "live"] = what_if if overrides else "strict"
    progress.start(label, len(parents))

    def work(parent: Row) -> Callable[[], Awaitable[None]]:
        async def go() -> None:
            job_id: str | None = None
            try:
                if parent.job_id is None:
                    row = replace(parent, strategy=label)
                else:
                    job_id = await backend.replay(parent.job_id, mode, overrides)
                    record = await backend.run(job_id)
                    row = record_row(
                        parent.problem_id, parent.problem_index, label, parent.expected,
                        record, parent=parent, carry_latency=mode == "strict",
                        strict=mode == "strict",
                    )  # fmt: skip
            except Exception as exc:  # recorded in the row and the report, not swallowed
                row = error_row(
                    parent.problem_id, parent.problem_index, label, parent.expected, job_id, exc
                )
                row.parent_job_id = parent.job_id
            sink.append(_with_signal(row, signal))
            progress.advance(label, row.correct)

        return go

    await bounded(concurrency, [work(p) for p in parents])
