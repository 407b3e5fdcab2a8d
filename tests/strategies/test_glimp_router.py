"""glimp_router against two scripted models: steps routed by first-token entropy.

The small model's first token is made to have a chosen entropy per step
(``first_token_entropy``, matched on the chain so far): 0.1 nats at step 0, 2.0 at
step 1, 0.2 at step 2. With tau = 1.0, steps 0 and 2 go to the small model and step 1
to the large one. The small model would have gone wrong at step 1 ("So 2 + 3 = 6.").

Simulator tokens: a glimpse = 1; "We add 2 and 3." = 6 (the glimpse "We" + 5 more);
"2 + 3 = 5." = 6; "The answer is 5." = 5 (the glimpse "The" + 4 more).
"""

from __future__ import annotations

from typing import Any

import pytest

from core.errors import InvalidInput
from core.jobs import submit_job
from core.runtime import Runtime
from core.simulator.config import Rule
from core.simulator.server import Simulator
from tests.strategies.helpers import QUESTION, replay, script, solve

SMALL_TEXT = "We add 2 and 3.\n\nSo 2 + 3 = 6.\n\nThe answer is 6."
LARGE_TEXT = "We add 2 and 3.\n\n2 + 3 = 5.\n\nThe answer is 5."
RULES = [
    Rule(model="sim-large", replies=[LARGE_TEXT]),
    # Most advanced chain first: the first matching rule wins.
    Rule(model="sim-small", match=r"= 5\.\n\n", replies=[LARGE_TEXT], first_token_entropy=0.2),
    Rule(model="sim-small", match=r"and 3\.\n\n", replies=[SMALL_TEXT], first_token_entropy=2.0),
    Rule(model="sim-small", replies=[SMALL_TEXT], first_token_entropy=0.1),
]


def decisions(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for name, a in events:
        if name == "route":
            out.append((name, a["step"], a["entropy"], a["tau"], a["to"], a["token"]))
        elif name == "step":
            out.append((name, a["step"], a["by"], a["tokens"], a["end"]))
        elif name == "final_answer":
            out.append((name, a["step"], a["by"], a["replaces"], a["answer"]))
        elif name == "final":
            out.append((name, a["answer"], a["steps"], a["steps_by"], a["end"]))
        else:
            out.append((name,))
    return out


async def test_routes_uncertain_steps_to_the_large_model(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(script(*RULES))
    job = await solve(rt, {"kind": "glimp_router", "tau": 1.0})

    assert job.answer == "5"
    assert job.result["text"] == LARGE_TEXT
    assert decisions(job.events) == [
        ("route", 0, 0.1, 1.0, "small", "We"),
        ("step", 0, "small", 6, None),
        ("route", 1, 2.0, 1.0, "large", "So"),
        ("step", 1, "large", 6, None),
        ("route", 2, 0.2, 1.0, "small", "The"),
        # The large model writes the conclusion (answer_role defaults to "large").
        ("final_answer", 2, "large", "small", "5"),
        ("step", 2, "large", 5, "answer"),
        ("final", "5", 3, {"small": 1, "large": 2}, "answer"),
    ]
    # small: 3 glimpses + 5 (rest of step 0) + 4 (rest of step 2) in 5 calls; large: the
    # routed step 1 (6) and the rewritten conclusion (5) in 2 calls.
    assert (job.tokens("small"), job.calls_to("small")) == (12, 5)
    assert (job.tokens("large"), job.calls_to("large")) == (11, 2)
    assert job.result["details"]["to_small"] == 2
    assert job.result["details"]["to_large"] == 1


async def test_tau_moves_the_split(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(script(*RULES))
    # tau above every entropy and the small model's own conclusion kept: all small.
    job = await solve(rt, {"kind": "glimp_router", "tau": 2.5, "answer_role": None})
    assert job.answer == "6"
    assert [(a["step"], a["to"]) for a in job.events_named("route")] == [
        (0, "small"),
        (1, "small"),
        (2, "small"),
    ]
    assert job.events_named("final_answer") == []
    # "So 2 + 3 = 6." = 7 tokens; 6 + 7 + 5, no glimpse paid twice.
    assert (job.tokens("small"), job.tokens("large"), job.calls_to("large")) == (18, 0, 0)

    # tau below every entropy: every step is the large model's, after a 1-token glimpse.
    job = await solve(rt, {"kind": "glimp_router", "tau": 0.05})
    assert job.answer == "5"
    assert [a["to"] for a in job.events_named("route")] == ["large", "large", "large"]
    assert (job.tokens("small"), job.tokens("large")) == (3, 17)


async def test_tight_budget_returns_the_chain_so_far(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(script(*RULES))
    # Steps of at most 16 tokens. 24 tokens pay for glimpse 0 (1), the rest of step 0
    # (5), glimpse 1 (1), the large step 1 (6) and glimpse 2 (1) = 14; the rest of step
    # 2 would reserve 15 of the 10 left.
    job = await solve(
        rt, {"kind": "glimp_router", "tau": 1.0, "step_tokens": 16}, budget={"max_tokens": 24}
    )
    assert job.result["budget_exhausted"] is True
    assert job.tokens() == 14 <= 24
    assert job.answer == "5"  # the last number of "We add 2 and 3.\n\n2 + 3 = 5."
    assert [n for n, _ in job.events][-3:] == ["route", "budget_exhausted", "final"]
    assert job.events[-1][1]["end"] == "budget_exhausted"


async def test_strict_replay_makes_no_model_calls(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(script(*RULES))
    job = await solve(rt, {"kind": "glimp_router", "tau": 1.0})
    before = simulator.stats.requests
    again = await replay(rt, job.job_id)
    assert simulator.stats.requests == before
    assert again.result == job.result
    assert again.events == job.events


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"tau": -0.5}, "strategy.tau"),
        ({"top_logprobs": 1}, "strategy.top_logprobs"),
        ({"max_steps": 0}, "strategy.max_steps"),
        ({"routing": "random"}, "strategy.routing"),
    ],
)
async def test_bad_params_name_the_field(rt: Runtime, params: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        await submit_job(
            rt.sessions, rt.pools, question=QUESTION, strategy={"kind": "glimp_router", **params}
        )
    assert caught.value.field == field
