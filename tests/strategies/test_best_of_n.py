"""best_of_n against the simulator: candidates from sim-small, one judgement per distinct
candidate text from sim-large (P(Yes) from the verdict token's logprob), selection by max
or weighted vote, explicit tie-breaks, unreadable and unpaid verifications, the budget.

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
from tests.strategies.helpers import QUESTION, replay, script, solve

SIX = "2 + 3 = 6. The answer is 6."
SIX_B = "3 + 2 = 6. The answer is 6."
FIVE = "2 + 3 = 5. The answer is 5."
FOUR = "2 + 3 = 4. The answer is 4."
UNSURE = "I do not know how to add these."  # no answer: never judged


def scored(solution: str, p_yes: float | None) -> Rule:
    """The verifier's verdict on exactly this solution: P(Yes) = p_yes (None: no verdict)."""
    match = re.escape(f"Proposed solution:\n{solution}\n\nIs the")
    if p_yes is None:
        return Rule(match=match, model="sim-large", replies=["Unsure."])
    word, p = ("Yes", p_yes) if p_yes >= 0.5 else ("No", 1.0 - p_yes)
    return Rule(match=match, model="sim-large", replies=[word], token_logprob=math.log(p))


def bon(candidates: list[str], scores: dict[str, float | None]) -> SimulatorConfig:
    return script(
        Rule(match=r"user: What is 2 \+ 3\?$", model="sim-small", replies=candidates),
        *[scored(s, p) for s, p in scores.items()],
    )


def summary(job: Any) -> list[tuple[Any, ...]]:
    return [
        (
            s["index"],
            s["answer"],
            s["score"] and round(s["score"], 6),
            s["source"],
            s["duplicate_of"],
        )
        for s in job.events_named("score")
    ]


async def test_the_best_scored_candidate_wins_and_equal_texts_are_judged_once(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(bon([SIX, FIVE, FOUR, FIVE], {SIX: 0.2, FIVE: 0.9, FOUR: 0.3}))
    job = await solve(rt, {"kind": "best_of_n", "n": 4})

    assert [n for n, _ in job.events] == ["candidate"] * 4 + ["score"] * 4 + ["select"]
    assert [(c["index"], c["answer"], c["source"]) for c in job.events_named("candidate")] == [
        (0, "6", "sample"),
        (1, "5", "sample"),
        (2, "4", "sample"),
        (3, "5", "sample"),
    ]
    assert summary(job) == [
        (0, "6", 0.2, "logprobs", None),
        (1, "5", 0.9, "logprobs", None),
        (2, "4", 0.3, "logprobs", None),
        (3, "5", 0.9, "logprobs", 1),  # same text as candidate 1: its verdict, no call
    ]
    select = job.events_named("select")[0]
    assert select == {
        "aggregate": "max", "index": 1, "answer": "5", "score": pytest.approx(0.9),
        "scores": {"6": pytest.approx(0.2), "5": pytest.approx(0.9), "4": pytest.approx(0.3)},
        "tie_break": None, "fallback": None,
    }  # fmt: skip
    assert job.answer == "5"
    assert job.result["text"] == FIVE
    assert job.result["votes"] == {"6": 1, "5": 2, "4": 1}
    assert (job.calls_to("small"), job.calls_to("large")) == (1, 3)
    assert (job.tokens("small"), job.tokens("large")) == (4 * 11, 3 * 1)

    # The three judgements sit in the verify span.
    verify = next(s for s in job.spans if s.kind == "span" and s.name == "verify")
    judged = [s for s in job.calls if s.name == "large.generate"]
    assert [s.parent_id for s in judged] == [verify.id] * 3

    before = simulator.stats.requests
    again = await replay(rt, job.job_id)
    assert simulator.stats.requests == before
    assert again.result == job.result
    assert again.events == job.events


@pytest.mark.parametrize(
    ("aggregate", "answer", "index", "scores"),
    [
        ("max", "5", 0, {"5": 0.9, "6": 0.6, "4": 0.2}),
        # 6: 0.6 + 0.5 = 1.1 beats 5: 0.9; the text is 6's best-scored candidate.
        ("weighted_vote", "6", 1, {"5": 0.9, "6": 1.1, "4": 0.2}),
    ],
)
async def test_max_or_weighted_vote(
    rt: Runtime,
    simulator: Simulator,
    aggregate: str,
    answer: str,
    index: int,
    scores: dict[str, float],
) -> None:
    simulator.set_config(
        bon([FIVE, SIX, SIX_B, FOUR], {FIVE: 0.9, SIX: 0.6, SIX_B: 0.5, FOUR: 0.2})
    )
    job = await solve(rt, {"kind": "best_of_n", "n": 4, "aggregate": aggregate})
    select = job.events_named("select")[0]
    assert (select["answer"], select["index"], select["tie_break"]) == (answer, index, None)
    assert select["scores"] == {a: pytest.approx(s) for a, s in scores.items()}
    assert job.answer == answer


@pytest.mark.parametrize(
    ("candidates", "scores", "index", "answer", "tie_break"),
    [
        # 5 and 6 both score 0.8; two candidates say 6, one says 5: agreement decides.
        (
            [FIVE, SIX, SIX_B, FOUR],
            {FIVE: 0.8, SIX: 0.8, SIX_B: 0.1, FOUR: 0.3},
            1,
            "6",
            "agreement",
        ),
        # Equal scores, equal agreement: the first candidate.
        ([FOUR, FIVE, SIX], {FOUR: 0.1, FIVE: 0.7, SIX: 0.7}, 1, "5", "first"),
    ],
)
async def test_ties_are_broken_by_agreement_then_order(
    rt: Runtime,
    simulator: Simulator,
    candidates: list[str],
    scores: dict[str, float],
    index: int,
    answer: str,
    tie_break: str,
) -> None:
    simulator.set_config(bon(candidates, dict(scores)))
    job = await solve(rt, {"kind": "best_of_n", "n": len(candidates)})
    select = job.events_named("select")[0]
    assert (select["index"], select["answer"], select["tie_break"]) == (index, answer, tie_break)


async def test_unreadable_and_answerless_candidates_never_win(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(bon([SIX, FIVE, UNSURE, FOUR], {SIX: None, FIVE: 0.4, FOUR: 0.3}))
    job = await solve(rt, {"kind": "best_of_n", "n": 4})
    assert summary(job) == [
        (0, "6", None, "none", None),  # "Unsure." is no verdict
        (1, "5", 0.4, "logprobs", None),
        (2, None, None, "no_answer", None),  # not judged: nothing to pick from it
        (3, "4", 0.3, "logprobs", None),
    ]
    assert job.answer == "5"
    assert job.calls_to("large") == 3


async def test_with_no_readable_verdict_the_majority_decides(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(bon([SIX, FIVE, FOUR, FIVE], {SIX: None, FIVE: None, FOUR: None}))
    job = await solve(rt, {"kind": "best_of_n", "n": 4})
    select = job.events_named("select")[0]
    assert (select["fallback"], select["answer"], select["index"]) == ("majority", "5", 1)
    assert job.result["budget_exhausted"] is False


@pytest.mark.parametrize(
    ("budget", "what"),
    [
        # Candidates reserve 4 x 12 = 48 and use 44; judgements reserve 4 tokens each:
        # two fit in the 10 left, the third finds 2.
        ({"max_tokens": 54}, "tokens"),
        # One call for the candidates, two for judgements.
        ({"max_calls": 3}, "calls"),
    ],
)
async def test_budget_out_mid_verification_keeps_the_best_verified(
    rt: Runtime, simulator: Simulator, budget: dict[str, int], what: str
) -> None:
    # FOUR would score best, but its judgement cannot be paid.
    simulator.set_config(bon([SIX, FIVE, FOUR, FIVE], {SIX: 0.2, FIVE: 0.9, FOUR: 0.95}))
    job = await solve(rt, {"kind": "best_of_n", "n": 4, "max_tokens": 12}, budget=budget)
    assert [n for n, _ in job.events] == (
        ["candidate"] * 4 + ["score"] * 4 + ["budget_exhausted", "select"]
    )
    assert summary(job) == [
        (0, "6", 0.2, "logprobs", None),
        (1, "5", 0.9, "logprobs", None),
        (2, "4", None, "budget", None),
        (3, "5", 0.9, "logprobs", 1),
    ]
    assert job.events_named("budget_exhausted")[0] == {"phase": "verify", "what": what}
    assert job.answer == "5"
    assert job.result["budget_exhausted"] is True
    assert job.tokens() == 4 * 11 + 2 <= 54
    assert (job.calls_to("small"), job.calls_to("large")) == (1, 2)

    if what == "calls":
        # Not with the token cut: a journal hit settles its reservation before the next
        # call of the same fan-out reserves, so on replay the third judgement would fit
        # (core.context, reported). A call count is never given back, so it replays.
        before = simulator.stats.requests
        again = await replay(rt, job.job_id)
        assert simulator.stats.requests == before
        assert again.result == job.result


async def test_with_nothing_verified_the_candidates_majority_is_the_answer(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(bon([SIX, FIVE, FOUR, FIVE], {SIX: 0.2, FIVE: 0.3, FOUR: 0.95}))
    job = await solve(rt, {"kind": "best_of_n", "n": 4}, budget={"max_calls": 1})
    assert [s["source"] for s in job.events_named("score")] == ["budget"] * 4
    assert job.events_named("budget_exhausted")[0] == {"phase": "verify", "what": "calls"}
    select = job.events_named("select")[0]
    assert (select["fallback"], select["answer"]) == ("majority", "5")
    assert job.result["budget_exhausted"] is True
    assert (job.calls_to("small"), job.calls_to("large")) == (1, 0)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"n": 0}, "strategy.n"),
        ({"aggregate": "mean"}, "strategy.aggregate"),
        ({"verify_tokens": 0}, "strategy.verify_tokens"),
        ({"generator": {"kind": "self_consistency", "n": 0}}, "strategy.generator.n"),
        ({"generator": {"kind": "nope"}}, "strategy.generator.kind"),
    ],
)
async def test_bad_params_name_the_field(rt: Runtime, change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        await submit_job(
            rt.sessions, rt.pools, question=QUESTION, strategy={"kind": "best_of_n", **change}
        )
    assert caught.value.field == field
