"""An eval's rows and summaries, and their ``results.json`` form.

One row per (problem, strategy): the job that answered it and what it spent. Summaries
are computed from rows only, so a results file can always be re-summarised, and a
replay's numbers compare to the original's field by field.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from core.errors import InvalidInput
from evals.arms import Arm
from evals.stats import cost_of_pass, mean, percentile, wilson_interval

FORMAT = "ponder-eval/1"
LEVELS = ("easy", "normal", "hard")
"""Difficulty bins (``difficulty_router``'s levels), easiest first."""


@dataclass
class Row:
    problem_id: str
    problem_index: int
    strategy: str
    """The arm's label."""
    job_id: str | None
    """None only when the job could not even be created (the error says why)."""
    status: str
    answer: str | None
    expected: str
    correct: bool
    tokens: dict[str, int]
    """Completion (generated) tokens by role."""
    prompt_tokens: dict[str, int]
    completion_tokens: int
    calls: int
    latency_s: float
    cost: float | None
    """From the pools' prices; None when a call's pool had no price (unknown, "n/a")."""
    live_calls: int = 0
    replayed_calls: int = 0
    budget_exhausted: bool = False
    error: dict[str, Any] | None = None
    parent_job_id: str | None = None
    wall_s: float | None = None
    """This run's own wall time when ``latency_s`` is carried from the parent (strict replay)."""
    difficulty: float | None = None
    """A per-problem difficulty signal, when the eval records one (stored with the row)."""
    reasoning_tokens: int = 0
    """The part of ``completion_tokens`` spent reasoning, all roles."""
    difficulty_bin: str | None = None
    """``easy``, ``normal`` or ``hard``: the problem's bin by ``difficulty``
    (``evals.difficulty``); None when not probed."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Row:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Summary:
    strategy: str
    spec: dict[str, Any]
    n: int
    correct: int
    failed: int
    budget_exhausted: int
    accuracy: float | None
    ci_low: float | None
    ci_high: float | None
    mean_tokens: float | None
    """Mean completion tokens per problem, all roles."""
    mean_tokens_by_role: dict[str, float]
    latency_p50: float | None
    latency_p90: float | None
    mean_cost: float | None
    total_cost: float | None
    cost_of_pass: float | None
    """Mean cost / accuracy; ``inf`` (``null`` in JSON, with ``cost_of_pass_infinite``)
    when nothing was answered correctly."""
    live_calls: int
    replayed_calls: int
    cost_known: bool = True
    """False when a row's cost is unknown (a pool without prices): the cost fields are
    None and print as "n/a" — a partial sum would read as the whole."""
    mean_reasoning_tokens: float | None = None
    """Mean reasoning tokens per problem (a part of ``mean_tokens``)."""


def summarize(arm: Arm, rows: list[Row]) -> Summary:
    n = len(rows)
    correct = sum(r.correct for r in rows)
    accuracy = correct / n if n else None
    low, high = wilson_interval(correct, n) if n else (None, None)
    roles = sorted({role for r in rows for role in r.tokens} | set(arm.roles))
    cost_known = all(r.cost is not None for r in rows)
    costs = [r.cost for r in rows if r.cost is not None]
    mean_cost = mean(costs) if cost_known else None
    return Summary(
        strategy=arm.label,
        spec=arm.spec,
        n=n,
        correct=correct,
        failed=sum(r.status != "succeeded" for r in rows),
        budget_exhausted=sum(r.budget_exhausted for r in rows),
        accuracy=accuracy,
        ci_low=low,
        ci_high=high,
        mean_tokens=mean([r.completion_tokens for r in rows]),
        mean_tokens_by_role={
            role: sum(r.tokens.get(role, 0) for r in rows) / n for role in roles if n
        },
        latency_p50=percentile([r.latency_s for r in rows], 50),
        latency_p90=percentile([r.latency_s for r in rows], 90),
        mean_cost=mean_cost,
        total_cost=sum(costs) if cost_known else None,
        cost_of_pass=cost_of_pass(mean_cost, accuracy),
        live_calls=sum(r.live_calls for r in rows),
        replayed_calls=sum(r.replayed_calls for r in rows),
        cost_known=cost_known,
        mean_reasoning_tokens=mean([r.reasoning_tokens for r in rows]),
    )


@dataclass
class EvalRun:
    """Everything one ``ponder eval`` produced; ``rows`` grows while jobs finish."""

    name: str
    created_at: str
    arms: list[Arm]
    problems: int
    settings: dict[str, Any]
    """How it ran: dataset, backend, budget and its rule, seed, concurrency."""
    rows: list[Row] = field(default_factory=list)
    bad_lines: list[dict[str, Any]] = field(default_factory=list)
    pilot: dict[str, Any] | None = None
    replay_of: dict[str, Any] | None = None
    original: list[Summary] | None = None
    """The replayed eval's summaries, for side-by-side comparison."""
    interrupted: bool = False
    experiment_id: str | None = None
    """The stored experiment (``/v1/experiments/{id}``), once the run is stored."""

    def rows_of(self, arm: Arm) -> list[Row]:
        ordered = sorted(self.rows, key=lambda r: r.problem_index)
        return [r for r in ordered if r.strategy == arm.label]

    def summaries(self) -> list[Summary]:
        return [summarize(arm, self.rows_of(arm)) for arm in self.arms]

    def by_difficulty(self) -> list[dict[str, Any]]:
        """Accuracy and mean tokens per arm per difficulty bin (bins with rows only)."""
        table = []
        for arm in self.arms:
            rows = self.rows_of(arm)
            for level in LEVELS:
                binned = [r for r in rows if r.difficulty_bin == level]
                if binned:
                    n, correct = len(binned), sum(r.correct for r in binned)
                    tokens = sum(r.completion_tokens for r in binned) / n
                    table.append({"strategy": arm.label, "bin": level, "n": n,
                                  "correct": correct, "accuracy": correct / n,
                                  "mean_tokens": tokens})  # fmt: skip
        return table

    def probe_calls(self) -> tuple[int, int]:
        """(live, replayed) model calls of the difficulty probes (not in ``calls``)."""
        calls = (self.settings.get("difficulty") or {}).get("calls") or {}
        return int(calls.get("live", 0)), int(calls.get("replayed", 0))

    def calls(self) -> tuple[int, int]:
        """(live, replayed) model calls over every row."""
        return sum(r.live_calls for r in self.rows), sum(r.replayed_calls for r in self.rows)

    def to_json(self) -> dict[str, Any]:
        live, replayed = self.calls()
        return {
            "format": FORMAT,
            "name": self.name,
            "experiment_id": self.experiment_id,
            "created_at": self.created_at,
            "interrupted": self.interrupted,
            "problems": self.problems,
            "settings": self.settings,
            "bad_lines": self.bad_lines,
            "replay_of": self.replay_of,
            "pilot": self.pilot,
            "calls": {"live": live, "replayed": replayed},
            "strategies": [
                {"label": a.label, "spec": a.spec, "params": a.params, "roles": sorted(a.roles)}
                for a in self.arms
            ],
            "summary": [_summary_json(s) for s in self.summaries()],
            "difficulty_summary": self.by_difficulty(),
            "original_summary": (
                [_summary_json(s) for s in self.original] if self.original else None
            ),
            "rows": [asdict(r) for r in sorted(self.rows, key=_row_order(self.arms))],
        }


def _row_order(arms: list[Arm]) -> Any:
    position = {a.label: i for i, a in enumerate(arms)}
    return lambda r: (position.get(r.strategy, len(arms)), r.problem_index)


def _summary_json(summary: Summary) -> dict[str, Any]:
    data = asdict(summary)
    infinite = summary.cost_of_pass is not None and math.isinf(summary.cost_of_pass)
    data["cost_of_pass"] = None if infinite else summary.cost_of_pass
    data["cost_of_pass_infinite"] = infinite
    return data


def summary_from_json(data: dict[str, Any]) -> Summary:
    known = {f.name for f in fields(Summary)}
    summary = Summary(**{k: v for k, v in data.items() if k in known})
    if data.get("cost_of_pass_infinite"):
        summary.cost_of_pass = math.inf
    return summary


def load_results(path: Path) -> dict[str, Any]:
    """A ``results.json`` written by ``ponder eval``, checked enough to replay it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"cannot read {path}: {exc}", field="replay") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InvalidInput(
            f"{path} is not a results.json written by `ponder eval` (format {FORMAT})",
            field="replay",
        )
    return data
