"""refine against the simulator: score, critique, revise, keep the best, stop on a pass.

The solver (sim-small) first answers 6; the verifier (sim-large) scores whole solutions
by P(Yes) and writes the critiques; revisions come from a rule that matches the
revise prompt, in order.
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
from tests.strategies.helpers import QUESTION, replay, script, solve

SIX = "2 + 3 = 6. The answer is 6."  # 11 tokens, as are the two below
FOUR = "2 + 3 = 4. The answer is 4."
FIVE = "2 + 3 = 5. The answer is 5."
CRITIQUE = "The sum is wrong: 2 + 3 is 5, not 6."  # 14 tokens


def scored(solution: str, p_yes: float) -> Rule:
    """The verifier's verdict on exactly this whole solution: P(Yes) = p_yes."""
    word, p = ("Yes", p_yes) if p_yes >= 0.5 else ("No", 1.0 - p_yes)
    return Rule(
        match=re.escape(f"Proposed solution:\n{solution}\n\nIs the"),
        model="sim-large",
        replies=[word],
        token_logprob=math.log(p),
    )


def loop(revisions: list[str], scores: dict[str, float]) -> SimulatorConfig:
    return script(
        Rule(match="system: You review math solutions", model="sim-large", replies=[CRITIQUE]),
        Rule(match="A reviewer wrote this feedback", model="sim-small", replies=revisions),
        Rule(match=r"user: What is 2 \+ 3\?$", model="sim-small", replies=[SIX, FIVE, FIVE]),
        *[scored(s, p) for s, p in scores.items()],
    )


async def test_critique_and_revise_until_the_verifier_passes_a_candidate(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(loop([FOUR, FIVE], {SIX: 0.1, FOUR: 0.05, FIVE: 0.95}))
    job = await solve(rt, {"kind": "refine", "max_rounds": 3, "pass_score": 0.8})

    assert [n for n, _ in job.events] == [
        "score",
        "critique", "revision", "score",
        "critique", "revision", "score",
        "stop",
    ]  # fmt: skip
    scores = job.events_named("score")
    assert [(s["round"], round(s["score"], 6), s["answer"], s["best"]) for s in scores] == [
        (0, 0.1, "6", True),
        (1, 0.05, "4", False),  # worse: the initial candidate stays the best
        (2, 0.95, "5", True),
    ]
    assert [s["source"] for s in scores] == ["logprobs"] * 3
    assert [s["candidate"] for s in scores] == ["initial", "revision", "revision"]
    # The worse revision is dropped, so round 2 critiques the initial candidate again.
    assert [(c["round"], c["of_round"], c["text"]) for c in job.events_named("critique")] == [
        (1, 0, CRITIQUE),
        (2, 0, CRITIQUE),
    ]
    assert [(r["round"], r["answer"]) for r in job.events_named("revision")] == [(1, "4"), (2, "5")]
    stop = job.events_named("stop")[0]
    assert stop == {
        "reason": "passed", "rounds": 2, "best_round": 2, "score": pytest.approx(0.95),
        "answer": "5",
    }  # fmt: skip
    assert job.answer == "5"
    assert job.result["text"] == FIVE
    assert job.result["details"]["stopped"] == "passed"

    # Solver: initial + 2 revisions; verifier: 3 scores + 2 critiques.
    assert (job.calls_to("small"), job.calls_to("large")) == (3, 5)
    assert job.tokens("small") == 3 * 11
    assert job.tokens("large") == 3 * 1 + 2 * 14

    before = simulator.stats.requests
    again = await replay(rt, job.job_id)
    assert simulator.stats.requests == before
    assert again.result == job.result
    assert again.events == job.events


async def test_a_child_strategy_gives_the_initial_candidate(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(loop([FOUR], {FIVE: 0.9}))
    spec = {"kind": "refine", "initial": {"kind": "self_consistency", "n": 3}}
    job = await solve(rt, spec)
    # The child votes 5 (SIX, FIVE, FIVE); its winning sample scores 0.9: no round needed.
    assert [n for n, _ in job.events] == ["sample", "sample", "sample", "vote", "score", "stop"]
    assert job.events_named("stop")[0]["reason"] == "passed"
    assert job.answer == "5"
    assert job.result["text"] == FIVE
    child = next(s for s in job.spans if s.kind == "strategy" and s.name == "self_consistency")
    parent = next(s for s in job.spans if s.kind == "strategy" and s.name == "refine")
    assert child.parent_id == parent.id
    assert (job.calls_to("small"), job.calls_to("large")) == (1, 1)


async def test_rounds_run_out_and_an_unreadable_verdict_never_wins(
    rt: Runtime, simulator: Simulator
) -> None:
    unsure = Rule(
        match=re.escape(f"Proposed solution:\n{FOUR}\n\n"), model="sim-large", replies=["Unsure."]
    )
    simulator.set_config(script(unsure, *loop([FOUR, FIVE], {SIX: 0.3, FIVE: 0.6}).rules))
    job = await solve(rt, {"kind": "refine", "max_rounds": 2, "pass_score": 0.8})
    scores = job.events_named("score")
    assert [(s["round"], s["score"], s["source"], s["best"]) for s in scores] == [
        (0, pytest.approx(0.3), "logprobs", True),
        (1, None, "none", False),  # "Unsure." is no verdict: scored 0, and it cannot pass
        (2, pytest.approx(0.6), "logprobs", True),
    ]
    stop = job.events_named("stop")[0]
    assert (stop["reason"], stop["rounds"], stop["best_round"]) == ("max_rounds", 2, 2)
    assert job.answer == "5"  # the best candidate, although it never passed


async def test_a_tight_budget_returns_the_best_candidate_so_far(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(loop([FIVE, FOUR], {SIX: 0.1, FIVE: 0.7}))
    spec = {
        "kind": "refine",
        "max_rounds": 3,
        "pass_score": 0.8,
        "max_tokens": 16,
        "critique_tokens": 16,
    }
    # Initial 11 + score 1 + critique 14 + revision 11 + score 1 = 38; the second
    # critique would need 16 of the 12 tokens left.
    job = await solve(rt, spec, budget={"max_tokens": 50})
    assert [n for n, _ in job.events] == [
        "score", "critique", "revision", "score", "budget_exhausted", "stop",
    ]  # fmt: skip
    assert job.events_named("budget_exhausted")[0] == {"what": "tokens", "round": 2}
    stop = job.events_named("stop")[0]
    assert (stop["reason"], stop["best_round"], stop["answer"]) == ("budget_exhausted", 1, "5")
    assert job.answer == "5"
    assert job.result["budget_exhausted"] is True
    assert job.tokens() == 38 <= 50


async def test_an_unscored_initial_candidate_is_still_the_anytime_answer(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(loop([FIVE], {SIX: 0.1}))
    job = await solve(rt, {"kind": "refine"}, budget={"max_calls": 1})
    assert [n for n, _ in job.events] == ["budget_exhausted", "stop"]
    assert job.events_named("budget_exhausted")[0] == {"what": "calls", "round": 0}
    assert job.answer == "6"
    assert job.result["budget_exhausted"] is True


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"pass_score": 1.5}, "strategy.pass_score"),
        ({"max_rounds": -1}, "strategy.max_rounds"),
        ({"critique_tokens": 0}, "strategy.critique_tokens"),
        ({"initial": {"kind": "self_consistency", "n": 0}}, "strategy.initial.n"),
        ({"initial": {"kind": "nope"}}, "strategy.initial.kind"),
    ],
)
async def test_bad_params_name_the_field(rt: Runtime, change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        await submit_job(
            rt.sessions, rt.pools, question=QUESTION, strategy={"kind": "refine", **change}
        )
    assert caught.value.field == field
