"""beam_search against the simulator: expansions, pruning by step reward, finished beams
keeping their slots, the best-scored finished beam answering.

The scripted search tree (beam_width 2, expansions 2), rewards in brackets:

    step 1 (root, n = 2 × 2):  A1 "2 + 3 = 5." [.9]   B1 "2 + 3 = 6." [.2]
                               C1 "Add 2 and 3." [.6]  D1 "Start with 2." [.7]
        keep A1, D1 (2 slots)
    step 2:  A1 -> "So the total is 5." [.95]   A1 -> "The answer is 7." [.85, finished]
             D1 -> "The answer is 4." [.3, finished]   D1 -> "Then add 3 to get 5." [.8]
        keep A1+total, A1+7 (finished, holds a slot); 1 slot left
    step 3:  A1+total -> "The answer is 5." twice [.99]: one duplicate
        keep one (finished); every slot finished -> the .99 beam answers 5, not the
        first finished beam's 7.
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

A1, B1, C1, D1 = "2 + 3 = 5.", "2 + 3 = 6.", "Add 2 and 3.", "Start with 2."
TOTAL, SEVEN = "So the total is 5.", "The answer is 7."
FOUR, ADD = "The answer is 4.", "Then add 3 to get 5."
FIVE = "The answer is 5."


def judged(partial: str, p_yes: float) -> Rule:
    """The verifier's step reward for exactly this partial solution: P(Yes) = p_yes."""
    word, p = ("Yes", p_yes) if p_yes >= 0.5 else ("No", 1.0 - p_yes)
    return Rule(
        match=re.escape(f"Reasoning so far:\n{partial}\n\nIs the"),
        model="sim-large",
        replies=[word],
        token_logprob=math.log(p),
    )


def after(prefill: str, replies: list[str]) -> Rule:
    """Next steps for a partial solution: the prefilled assistant message ends with it."""
    return Rule(
        match=re.escape(f"assistant: {prefill}\n\n") + r"\Z", model="sim-small", replies=replies
    )


def tree() -> SimulatorConfig:
    return script(
        after(f"{A1}\n\n{TOTAL}", [FIVE]),
        after(A1, [TOTAL, SEVEN]),
        after(D1, [FOUR, ADD]),
        Rule(match=r"user: What is 2 \+ 3\?$", model="sim-small", replies=[A1, B1, C1, D1]),
        judged(A1, 0.9),
        judged(B1, 0.2),
        judged(C1, 0.6),
        judged(D1, 0.7),
        judged(f"{A1}\n\n{TOTAL}", 0.95),
        judged(f"{A1}\n\n{SEVEN}", 0.85),
        judged(f"{D1}\n\n{FOUR}", 0.3),
        judged(f"{D1}\n\n{ADD}", 0.8),
        judged(f"{A1}\n\n{TOTAL}\n\n{FIVE}", 0.99),
    )


def rows(event: dict[str, Any], key: str) -> list[tuple[int, float]]:
    return [(r["candidate"], round(r["reward"], 6)) for r in event[key]]


async def test_beams_are_pruned_by_step_reward_and_the_best_finished_one_answers(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(tree())
    spec = {"kind": "beam_search", "beam_width": 2, "expansions": 2, "step_tokens": 32}
    job = await solve(rt, spec)

    names = [n for n, _ in job.events]
    assert names == [
        "expand", "prune",
        "expand", "prune", "finished",
        "expand", "prune", "finished",
        "final",
    ]  # fmt: skip
    expand, prune = job.events_named("expand"), job.events_named("prune")
    assert [(c["parent"], round(c["reward"], 6)) for c in expand[0]["candidates"]] == [
        (0, 0.9), (0, 0.2), (0, 0.6), (0, 0.7),
    ]  # fmt: skip
    assert prune[0]["slots"] == 2
    assert rows(prune[0], "kept") == [(0, 0.9), (3, 0.7)]
    assert rows(prune[0], "dropped") == [(1, 0.2), (2, 0.6)]

    assert expand[1]["beams"] == 2
    assert [(c["parent"], round(c["reward"], 6), c["end"]) for c in expand[1]["candidates"]] == [
        (0, 0.95, None), (0, 0.85, "answer"), (1, 0.3, "answer"), (1, 0.8, None),
    ]  # fmt: skip
    assert rows(prune[1], "kept") == [(0, 0.95), (1, 0.85)]
    assert rows(prune[1], "dropped") == [(2, 0.3), (3, 0.8)]
    finished = job.events_named("finished")
    assert [(f["step"], f["beam"], f["answer"]) for f in finished] == [(2, 0, "7"), (3, 1, "5")]

    # The last step has one slot left; the second "The answer is 5." is a duplicate.
    assert prune[2]["slots"] == 1
    assert rows(prune[2], "kept") == [(0, 0.99)]
    assert [(r["candidate"], r["duplicate"]) for r in prune[2]["dropped"]] == [(1, True)]

    final = job.events_named("final")[0]
    assert (final["answer"], final["beam"], final["finished"]) == ("5", 1, True)
    assert final["rewards"] == pytest.approx([0.85, 0.99])
    assert job.answer == "5"
    assert job.result["text"] == f"{A1}\n\n{TOTAL}\n\n{FIVE}"

    # Calls: root (n=4), two beams (n=2 each), one beam (n=2). Judgements: 4 + 4 + 1
    # (the duplicate is judged once).
    assert [c.attributes["n"] for c in job.calls if c.attributes["role"] == "small"] == [4, 2, 2, 2]
    assert (job.calls_to("small"), job.calls_to("large")) == (4, 9)
    # Tokens: A1 6 + B1 6 + C1 5 + D1 4; TOTAL 6 + SEVEN 5 + FOUR 5 + ADD 7; FIVE 5 × 2.
    assert job.tokens("small") == 21 + 23 + 10
    assert job.tokens("large") == 9

    before = simulator.stats.requests
    again = await replay(rt, job.job_id)
    assert simulator.stats.requests == before
    assert again.result == job.result
    assert again.events == job.events


async def test_a_model_that_stops_and_the_step_limit_both_finish_a_beam(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(
        script(
            after(A1, [""]),  # the model ends right after its first step: no answer line
            after("Let me think.", ["Still thinking."]),
            Rule(
                match=r"user: What is 2 \+ 3\?$", model="sim-small", replies=[A1, "Let me think."]
            ),
            judged(A1, 0.9),
            judged("Let me think.", 0.5),
            judged("Let me think.\n\nStill thinking.", 0.4),
        )
    )
    spec = {"kind": "beam_search", "beam_width": 2, "expansions": 1, "max_steps": 2}
    job = await solve(rt, spec)
    assert [c["end"] for c in job.events_named("expand")[1]["candidates"]] == ["eos", "max_steps"]
    finished = job.events_named("finished")
    assert [(f["reason"], f["answer"]) for f in finished] == [("eos", "5"), ("max_steps", None)]
    assert job.answer == "5"
    assert job.result["text"] == A1
    # The ended beam's text is unchanged, so its judgement is reused: 2 + 1 verifier calls.
    assert job.calls_to("large") == 3
    assert job.result["details"]["verifier_calls"] == 3


async def test_a_tight_budget_keeps_the_paid_calls_and_answers_from_the_best_beam(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(tree())
    spec = {"kind": "beam_search", "beam_width": 2, "expansions": 2, "step_tokens": 8}
    # Step 1: 21 + 4 judgement tokens = 25. Step 2 reserves 2 × (2 × 8) = 32 (57 - 25 = 32
    # left) and uses 23 (48); two of its four judgements fit in the 9 tokens left (50),
    # the third cannot reserve 4: the step is incomplete and the search stops.
    job = await solve(rt, spec, budget={"max_tokens": 57})
    assert [n for n, _ in job.events] == ["expand", "prune", "budget_exhausted", "final"]
    assert job.events_named("budget_exhausted")[0] == {"what": "tokens", "step": 2}
    final = job.events_named("final")[0]
    assert (final["answer"], final["finished"]) == ("5", False)
    assert final["reward"] == pytest.approx(0.9)
    assert job.result["budget_exhausted"] is True
    assert job.result["text"] == A1
    assert job.result["details"]["steps"] == 1
    assert job.tokens() == 50 <= 57
    assert (job.calls_to("small"), job.calls_to("large")) == (3, 6)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"beam_width": 0}, "strategy.beam_width"),
        ({"expansions": 17}, "strategy.expansions"),
        ({"max_steps": 0}, "strategy.max_steps"),
        ({"temperature": -1}, "strategy.temperature"),
    ],
)
async def test_bad_params_name_the_field(rt: Runtime, change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        await submit_job(
            rt.sessions, rt.pools, question=QUESTION, strategy={"kind": "beam_search", **change}
        )
    assert caught.value.field == field
