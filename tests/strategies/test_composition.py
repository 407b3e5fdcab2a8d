"""Strategies wrapped around strategies, end to end: the span tree (each child strategy
span under its parent's), the answer, the tokens per role, replay; and a bad field deep
in a nested spec named by its whole path.

Every solution is 11 tokens; every verdict ("Yes"/"No") is 1 token.
"""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from core.errors import InvalidInput
from core.jobs import submit_job
from core.runtime import Runtime
from core.simulator.config import Rule, SimulatorConfig
from core.simulator.server import Simulator
from tests.strategies.helpers import QUESTION, SolvedJob, Span, replay, script, solve

SIX = "2 + 3 = 6. The answer is 6."
FIVE = "2 + 3 = 5. The answer is 5."
FOUR = "2 + 3 = 4. The answer is 4."


def scored(solution: str, p_yes: float) -> Rule:
    word, p = ("Yes", p_yes) if p_yes >= 0.5 else ("No", 1.0 - p_yes)
    return Rule(
        match=re.escape(f"Proposed solution:\n{solution}\n\nIs the"),
        model="sim-large",
        replies=[word],
        token_logprob=math.log(p),
    )


def composed(solver: list[str]) -> SimulatorConfig:
    return script(
        Rule(match=r"user: What is 2 \+ 3\?$", model="sim-small", replies=solver),
        scored(FIVE, 0.9),
        scored(SIX, 0.3),
        scored(FOUR, 0.2),
    )


def strategy_spans(job: SolvedJob, kind: str) -> list[Span]:
    return [s for s in job.spans if s.kind == "strategy" and s.name == kind]


def children_of(job: SolvedJob, parent: Span) -> list[tuple[str, str]]:
    return [(s.kind, s.name) for s in job.spans if s.parent_id == parent.id]


async def test_best_of_n_around_adaptive_self_consistency(
    rt: Runtime, simulator: Simulator
) -> None:
    # Each child run samples a batch of 2 that agrees, so it stops after one call:
    # the first run votes 5 (FIVE, FIVE), the second 6 (SIX, SIX).
    simulator.set_config(composed([FIVE, FIVE, SIX, SIX]))
    child = {
        "kind": "self_consistency", "n": 3, "adaptive": True, "batch_size": 2, "min_samples": 2,
    }  # fmt: skip
    job = await solve(rt, {"kind": "best_of_n", "n": 2, "generator": child})

    (parent,) = strategy_spans(job, "best_of_n")
    runs = strategy_spans(job, "self_consistency")
    assert [s.parent_id for s in runs] == [parent.id, parent.id]
    assert children_of(job, parent) == [
        ("strategy", "self_consistency"),
        ("strategy", "self_consistency"),
        ("event", "candidate"),
        ("event", "candidate"),
        ("span", "verify"),
        ("event", "select"),
    ]
    for run in runs:
        assert children_of(job, run) == [
            ("model_call", "small.generate"),
            ("event", "sample"),
            ("event", "sample"),
            ("event", "vote"),
        ]
        assert run.attributes["budget_exhausted"] is False
    assert [r.attributes["answer"] for r in runs] == ["5", "6"]
    assert [v["stopped"] for v in job.events_named("vote")] == ["leader_cannot_be_overturned"] * 2
    (verify,) = [s for s in job.spans if s.name == "verify"]
    assert (
        children_of(job, verify)
        == [("model_call", "large.generate")] * 2 + [("event", "score")] * 2
    )

    candidates = job.events_named("candidate")
    assert [(c["answer"], c["source"]) for c in candidates] == [("5", "child"), ("6", "child")]
    assert job.answer == "5"
    assert job.result["text"] == FIVE
    assert parent.attributes["answer"] == "5"
    # Two child calls of 2 samples each; one judgement per child's answer.
    assert (job.calls_to("small"), job.calls_to("large")) == (2, 2)
    assert (job.tokens("small"), job.tokens("large")) == (4 * 11, 2 * 1)

    before = simulator.stats.requests
    again = await replay(rt, job.job_id)
    assert simulator.stats.requests == before
    assert again.result == job.result
    assert again.events == job.events


async def test_best_of_n_around_direct(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(composed([SIX, FOUR, FIVE]))
    spec = {"kind": "best_of_n", "n": 3, "generator": {"kind": "direct", "temperature": 0.7}}
    job = await solve(rt, spec)
    (parent,) = strategy_spans(job, "best_of_n")
    runs = strategy_spans(job, "direct")
    assert [s.parent_id for s in runs] == [parent.id] * 3
    assert [r.attributes["answer"] for r in runs] == ["6", "4", "5"]
    assert [round(s["score"], 6) for s in job.events_named("score")] == [0.3, 0.2, 0.9]
    assert job.answer == "5"
    assert (job.tokens("small"), job.tokens("large")) == (3 * 11, 3 * 1)


async def test_genrm_around_best_of_n_around_direct(rt: Runtime, simulator: Simulator) -> None:
    # Three levels: genrm with no verifications votes over two best_of_n runs, each of
    # which judges two direct runs.
    simulator.set_config(composed([SIX, FIVE, FOUR, FIVE]))
    inner = {"kind": "best_of_n", "n": 2, "generator": {"kind": "direct", "temperature": 0.7}}
    job = await solve(rt, {"kind": "genrm", "solutions": 2, "verifications": 0, "generator": inner})
    (top,) = strategy_spans(job, "genrm")
    middle = strategy_spans(job, "best_of_n")
    assert [s.parent_id for s in middle] == [top.id] * 2
    leaves = strategy_spans(job, "direct")
    assert [s.parent_id for s in leaves] == [middle[0].id] * 2 + [middle[1].id] * 2
    assert [s.attributes["answer"] for s in middle] == ["5", "5"]
    assert job.events_named("vote")[-1]["votes"] == {"5": 2}
    assert job.answer == "5"
    assert (job.calls_to("small"), job.calls_to("large")) == (4, 4)


async def test_a_child_that_runs_out_of_budget_stops_the_generation(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(composed([FIVE, FIVE, SIX]))
    spec = {"kind": "best_of_n", "n": 3, "generator": {"kind": "direct", "temperature": 0.7}}
    job = await solve(rt, spec, budget={"max_calls": 2})
    # Two direct runs are paid; the third returns no answer, marked exhausted.
    runs = strategy_spans(job, "direct")
    assert [r.attributes["budget_exhausted"] for r in runs] == [False, False, True]
    assert job.events_named("budget_exhausted")[-1] == {"phase": "generate", "what": "child"}
    assert [s["source"] for s in job.events_named("score")] == ["budget", "budget"]
    assert job.events_named("select")[0]["fallback"] == "majority"
    assert job.answer == "5"
    assert job.result["budget_exhausted"] is True
    assert job.calls_to("small") == 2


@pytest.mark.parametrize(
    ("strategy", "field"),
    [
        (
            {"kind": "best_of_n", "generator": {"kind": "self_consistency", "n": 0}},
            "strategy.generator.n",
        ),
        (
            {
                "kind": "genrm",
                "generator": {"kind": "best_of_n", "generator": {"kind": "direct", "top_p": 0}},
            },
            "strategy.generator.generator.top_p",
        ),
        (
            {"kind": "best_of_n", "generator": {"kind": "rpc", "pruning": "mean"}},
            "strategy.generator.pruning",
        ),
        (
            {"kind": "best_of_n", "generator": {"kind": "direct", "nope": 1}},
            "strategy.generator.nope",
        ),
    ],
)
async def test_bad_fields_are_named_at_depth(
    rt: Runtime, strategy: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        await submit_job(rt.sessions, rt.pools, question=QUESTION, strategy=strategy)
    assert caught.value.field == field


async def test_a_strategy_span_keeps_its_own_params_and_only_its_childs_kind(
    rt: Runtime, simulator: Simulator
) -> None:
    """Each level stores what it was given minus its children (who store their own), so
    a trace grows with the number of spans, not with the square of the nesting depth."""
    simulator.set_config(composed([FIVE]))
    spec: dict[str, Any] = {"kind": "direct", "temperature": 0.7}
    for _ in range(3):
        spec = {"kind": "best_of_n", "n": 1, "generator": spec}
    job = await solve(rt, spec)
    levels = strategy_spans(job, "best_of_n")
    assert [s.attributes["params"]["generator"] for s in levels] == [
        {"kind": "best_of_n"},
        {"kind": "best_of_n"},
        {"kind": "direct"},
    ]
    assert all(s.attributes["params"]["n"] == 1 for s in levels)
    (leaf,) = strategy_spans(job, "direct")
    assert leaf.attributes["params"]["temperature"] == 0.7


async def test_the_deepest_allowed_spec_runs_and_its_trace_grows_linearly(
    rt: Runtime, simulator: Simulator
) -> None:
    from strategies.registry import MAX_SPEC_DEPTH

    simulator.set_config(composed([FIVE]))

    def nested(depth: int) -> dict[str, Any]:
        spec: dict[str, Any] = {"kind": "direct", "temperature": 0.7}
        for _ in range(depth - 1):
            spec = {"kind": "best_of_n", "n": 1, "generator": spec}
        return spec

    sizes = {}
    for depth in (MAX_SPEC_DEPTH // 2, MAX_SPEC_DEPTH):
        job = await solve(rt, nested(depth))
        assert job.outcome.status == "succeeded"
        sizes[depth] = sum(len(repr(s.attributes)) for s in strategy_spans(job, "best_of_n"))
    # Linear: twice the depth, about twice the bytes (quadratic would be about four times).
    ratio = sizes[MAX_SPEC_DEPTH] / sizes[MAX_SPEC_DEPTH // 2]
    assert ratio < 2.8, sizes
    with pytest.raises(InvalidInput, match=f"at most {MAX_SPEC_DEPTH} deep"):
        await solve(rt, nested(MAX_SPEC_DEPTH + 1))
