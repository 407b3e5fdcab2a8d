"""solve_detect_verify against the simulator: the solver (sim-small) streams, the verifier
(sim-large) scores the text so far at each stated answer by P(Yes).

Simulator tokens (a word or a punctuation mark with its leading space):
- EARLY is 34 tokens; "2 + 3 = 5. The answer is 5." is its first 11, and the completion
  point after it is seen when the 12th, " Let", arrives.
- RECHECK is 30 tokens: a point after token 11 (seen at 12) and one after token 28
  ("... The answer is 5.", seen at 29 with " Done").
- WRONG, FIVE and FOUR are 11 tokens each, and end with their answer: their only
  completion point is the end of the stream.
A verdict ("Yes"/"No") is 1 token.
"""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from core.db import repo
from core.errors import InvalidInput
from core.jobs import submit_job
from core.runtime import Runtime
from core.simulator.config import Latency, Rule, SimulatorConfig
from core.simulator.server import Simulator
from strategies.protocol import CANCELLED
from tests.strategies.helpers import QUESTION, SolvedJob, replay, script, solve

FIRST = "2 + 3 = 5. The answer is 5."
EARLY = FIRST + " Let me double-check by counting up from 2: 3, 4, 5. So the answer is 5."
STATED_6 = "2 + 3 = 6. The answer is 6."
RECHECK_POINT = STATED_6 + " Wait, let me recheck: 2 + 3 = 5. The answer is 5."
RECHECK = RECHECK_POINT + " Done."
WRONG = STATED_6
FIVE = FIRST
FOUR = "2 + 3 = 4. The answer is 4."


def scored(solution: str, p_yes: float) -> Rule:
    """The verifier's verdict on exactly this text: P(Yes) = p_yes."""
    word, p = ("Yes", p_yes) if p_yes >= 0.5 else ("No", 1.0 - p_yes)
    return Rule(
        match=re.escape(f"Proposed solution:\n{solution}\n\nIs the"),
        model="sim-large",
        replies=[word],
        token_logprob=math.log(p),
    )


def solver(
    first: str, scores: dict[str, float], feedback: list[str] | None = None
) -> SimulatorConfig:
    slow = Latency(per_token_ms=5)  # the server is still decoding when the solver is stopped
    rules = [
        Rule(match=r"user: What is 2 \+ 3\?$", model="sim-small", replies=[first], latency=slow),
        *[scored(text, p) for text, p in scores.items()],
    ]
    if feedback:
        after = re.escape(f"assistant: {first}\nuser: A verifier checked your solution")
        rules.insert(0, Rule(match=after, model="sim-small", replies=feedback, latency=slow))
    return script(*rules)


def decisions(job: SolvedJob) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for name, a in job.events:
        if name == "completion_point":
            out.append((name, a["round"], a["tokens"], a["chars"], a["answer"], a["at_end"]))
        elif name == "verification":
            score = None if a["score"] is None else round(a["score"], 6)
            out.append((name, a["round"], score, a["source"], a["verified"]))
        elif name == "early_stop":
            out.append((name, a["round"], a["answer"], a["tokens"]))
        elif name == "feedback":
            score = None if a["score"] is None else round(a["score"], 6)
            out.append((name, a["round"], a["previous_answer"], score))
        elif name == "final":
            score = None if a["score"] is None else round(a["score"], 6)
            out.append((name, a["answer"], a["reason"], a["rounds"], a["checks"], score))
        else:
            out.append((name, *sorted(a.items())))
    return out


async def solver_calls(rt: Runtime, job_id: str) -> list[dict[str, Any]]:
    async with rt.sessions() as session:
        entries = await repo.list_calls(session, job_id)
    return [
        {**e.response["choices"][0], "tokens": e.completion_tokens}
        for e in entries
        if e.role == "small"
    ]


async def test_a_verified_completion_point_stops_the_solver(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(solver(EARLY, {FIRST: 0.9}))
    job = await solve(rt, {"kind": "solve_detect_verify"})

    assert decisions(job) == [
        ("completion_point", 0, 12, len(FIRST), "5", False),
        ("verification", 0, 0.9, "logprobs", True),
        ("early_stop", 0, "5", 12),
        ("final", "5", "early_stop", 0, 1, 0.9),
    ]
    assert job.answer == "5"
    assert job.result["text"] == FIRST
    # The solver paid for 12 of its 34 tokens; one verifier call of one token.
    assert (job.tokens("small"), job.calls_to("small")) == (12, 1)
    assert (job.tokens("large"), job.calls_to("large")) == (1, 1)
    assert await solver_calls(rt, job.job_id) == [
        {"index": 0, "text": FIRST + " Let", "finish_reason": CANCELLED, "tokens": 12}
    ]

    before = simulator.stats.requests
    again = await replay(rt, job.job_id)
    assert simulator.stats.requests == before
    assert again.result == job.result
    assert again.events == job.events
    assert again.tokens() == job.tokens()


async def test_a_rejected_point_lets_the_solver_go_on(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(solver(RECHECK, {STATED_6: 0.2, RECHECK_POINT: 0.9}))
    job = await solve(rt, {"kind": "solve_detect_verify"})

    assert decisions(job) == [
        ("completion_point", 0, 12, len(STATED_6), "6", False),
        ("verification", 0, 0.2, "logprobs", False),
        ("completion_point", 0, 29, len(RECHECK_POINT), "5", False),
        ("verification", 0, 0.9, "logprobs", True),
        ("early_stop", 0, "5", 29),
        ("final", "5", "early_stop", 0, 2, 0.9),
    ]
    assert job.answer == "5"
    assert (job.tokens("small"), job.tokens("large"), job.calls_to("large")) == (29, 2, 2)

    before = simulator.stats.requests
    again = await replay(rt, job.job_id)
    assert simulator.stats.requests == before
    assert again.events == job.events


async def test_max_checks_leaves_the_rest_to_the_finished_solution(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(solver(RECHECK, {STATED_6: 0.2, RECHECK: 0.85}))
    job = await solve(rt, {"kind": "solve_detect_verify", "max_checks": 1})

    assert decisions(job) == [
        ("completion_point", 0, 12, len(STATED_6), "6", False),
        ("verification", 0, 0.2, "logprobs", False),
        ("checks_exhausted", ("max_checks", 1), ("round", 0)),
        ("completion_point", 0, 30, len(RECHECK), "5", True),
        ("verification", 0, 0.85, "logprobs", True),
        ("final", "5", "verified", 0, 2, 0.85),
    ]
    assert job.tokens("small") == 30  # read to the end
    [call] = await solver_calls(rt, job.job_id)
    assert call["finish_reason"] == "stop"


async def test_a_rejected_finished_solution_gets_a_feedback_round(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(solver(WRONG, {WRONG: 0.1, FIVE: 0.95}, feedback=[FIVE]))
    job = await solve(rt, {"kind": "solve_detect_verify"})

    assert decisions(job) == [
        ("completion_point", 0, 11, len(WRONG), "6", True),
        ("verification", 0, 0.1, "logprobs", False),
        ("feedback", 1, "6", 0.1),
        ("completion_point", 1, 11, len(FIVE), "5", True),
        ("verification", 1, 0.95, "logprobs", True),
        ("final", "5", "verified", 1, 2, 0.95),
    ]
    assert job.answer == "5"
    assert (job.calls_to("small"), job.tokens("small")) == (2, 22)
    assert (job.calls_to("large"), job.tokens("large")) == (2, 2)
    attempts = [s for s in job.spans if s.kind == "span" and s.name == "attempt"]
    assert [a.attributes["round"] for a in attempts] == [0, 1]

    before = simulator.stats.requests
    again = await replay(rt, job.job_id)
    assert simulator.stats.requests == before
    assert again.result == job.result and again.events == job.events


async def test_when_every_round_is_rejected_the_best_scored_answer_is_kept(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(solver(WRONG, {WRONG: 0.3, FOUR: 0.1}, feedback=[FOUR]))
    job = await solve(rt, {"kind": "solve_detect_verify", "max_rounds": 1})
    assert [n for n, _ in job.events] == [
        "completion_point", "verification", "feedback",
        "completion_point", "verification", "final",
    ]  # fmt: skip
    assert decisions(job)[-1] == ("final", "6", "max_rounds", 1, 2, 0.3)
    assert job.answer == "6"


async def test_a_feedback_round_the_budget_cannot_pay_returns_the_best_so_far(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(solver(WRONG, {WRONG: 0.1}, feedback=[FIVE]))
    spec = {"kind": "solve_detect_verify", "max_tokens": 16}
    # Solver 11 + verdict 1 = 12; the feedback attempt would need 16 of the 8 left.
    job = await solve(rt, spec, budget={"max_tokens": 20})
    assert decisions(job) == [
        ("completion_point", 0, 11, len(WRONG), "6", True),
        ("verification", 0, 0.1, "logprobs", False),
        ("feedback", 1, "6", 0.1),
        ("budget_exhausted", ("round", 1), ("what", "tokens")),
        ("final", "6", "budget_exhausted", 1, 1, 0.1),
    ]
    assert job.answer == "6"
    assert job.result["budget_exhausted"] is True
    assert job.tokens() == 12 <= 20


async def test_an_unpaid_verification_lets_the_solver_finish_unchecked(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(solver(RECHECK, {STATED_6: 0.9}))
    spec = {"kind": "solve_detect_verify", "max_tokens": 16}
    # The open solver stream holds 16 of 18 tokens: the 4-token verdict cannot be paid.
    job = await solve(rt, spec, budget={"max_tokens": 18})
    assert decisions(job) == [
        ("completion_point", 0, 12, len(STATED_6), "6", False),
        ("budget_exhausted", ("round", 0), ("what", "tokens")),
        ("final", "6", "budget_exhausted", 0, 0, None),
    ]
    assert job.answer == "6"
    assert job.result["budget_exhausted"] is True
    assert (job.tokens("small"), job.calls_to("large")) == (16, 0)
    [call] = await solver_calls(rt, job.job_id)
    assert call["finish_reason"] == "length"
    assert job.tokens() == 16 <= 18


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"threshold": 1.5}, "strategy.threshold"),
        ({"max_checks": -1}, "strategy.max_checks"),
        ({"max_rounds": 11}, "strategy.max_rounds"),
        ({"max_tokens": 0}, "strategy.max_tokens"),
        ({"verifier": "large"}, "strategy.verifier"),
    ],
)
async def test_bad_params_name_the_field(rt: Runtime, change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        await submit_job(
            rt.sessions,
            rt.pools,
            question=QUESTION,
            strategy={"kind": "solve_detect_verify", **change},
        )
    assert caught.value.field == field


async def test_fewer_tokens_than_solving_to_the_end_on_the_same_script(
    rt: Runtime, simulator: Simulator
) -> None:
    # The baseline generates the whole solution (34 tokens); solve_detect_verify stops
    # the solver at the verified completion point (12) and pays one verdict token.
    simulator.set_config(solver(EARLY, {FIRST: 0.9}))
    baseline = await solve(rt, {"kind": "direct"})
    early = await solve(rt, {"kind": "solve_detect_verify"})

    assert baseline.tokens("small") == 34
    assert early.tokens("small") == 12
    assert early.tokens() < baseline.tokens()
