"""difficulty_router against two scripted models: the probe picks the child strategy.

The entropy probe prefills "The answer is " and reads one token; the simulator gives
that token the entropy each question's rule asks for. Default thresholds for the
entropy probe: easy <= 0.5 nats, hard >= 1.5 nats. Default children: direct on small,
self_consistency (n=4) on small, self_consistency (n=4) on large.

Simulator tokens: the probe's token "5" = 1; "The answer is N." = 5.
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

PROBED = r"\nassistant: The answer is $"
RULES = [
    Rule(
        model="sim-small",
        match=r"2 \+ 3\?" + PROBED,
        replies=["The answer is 5."],
        first_token_entropy=0.1,
    ),
    Rule(
        model="sim-small",
        match=r"12 \* 12\?" + PROBED,
        replies=["The answer is 144."],
        first_token_entropy=1.0,
    ),
    Rule(
        model="sim-small",
        match=r"17 \* 23\?" + PROBED,
        replies=["The answer is 391."],
        first_token_entropy=2.0,
    ),
    Rule(model="sim-small", replies=["The answer is 5.", "The answer is 5.", "The answer is 6."]),
    Rule(model="sim-large", replies=["The answer is 391."]),
]


@pytest.mark.parametrize(
    ("question", "entropy", "level", "child", "answer", "small", "large"),
    [
        # probe 1 + one direct answer 5
        ("What is 2 + 3?", 0.1, "easy", ["direct"], "5", 6, 0),
        # probe 1 + four small samples 4 x 5
        ("What is 12 * 12?", 1.0, "normal", ["self_consistency"], "5", 21, 0),
        # probe 1; four large samples 4 x 5
        ("What is 17 * 23?", 2.0, "hard", ["self_consistency"], "391", 1, 20),
    ],
)
async def test_the_probe_picks_the_child(
    rt: Runtime,
    simulator: Simulator,
    question: str,
    entropy: float,
    level: str,
    child: list[str],
    answer: str,
    small: int,
    large: int,
) -> None:
    simulator.set_config(script(*RULES))
    job = await solve(rt, {"kind": "difficulty_router"}, question=question)

    assert job.answer == answer
    token = {"easy": "5", "normal": "144", "hard": "391"}[level]
    assert job.events[:2] == [
        ("probe", {"probe": "entropy", "value": entropy, "token": token}),
        ("difficulty", {"level": level, "value": entropy, "easy_max": 0.5, "hard_min": 1.5}),
    ]
    child_events = {"easy": ["answer"], "normal": ["sample"] * 4 + ["vote"]}
    assert [n for n, _ in job.events[2:]] == child_events.get(level, ["sample"] * 4 + ["vote"])
    strategies = [s.name for s in job.spans if s.kind == "strategy"]
    assert strategies == ["difficulty_router", *child]
    child_span = next(s for s in job.spans if s.kind == "strategy" and s.name == child[0])
    expected_role = "large" if level == "hard" else "small"
    assert child_span.attributes["params"]["role"] == expected_role
    assert (job.tokens("small"), job.tokens("large")) == (small, large)
    assert job.result["details"]["difficulty"] == level


async def test_attempt_and_agreement_probes(rt: Runtime, simulator: Simulator) -> None:
    # attempt: a greedy attempt whose tokens all have logprob -0.3: difficulty 0.3,
    # between 0.15 and 0.4, so normal.
    simulator.set_config(
        script(
            Rule(model="sim-small", replies=["The answer is 5."], token_logprob=-0.3),
            Rule(model="sim-large", replies=["The answer is 5."]),
        )
    )
    job = await solve(rt, {"kind": "difficulty_router", "probe": "attempt"})
    assert job.events[:2] == [
        ("probe", {"probe": "attempt", "value": 0.3, "answer": "5", "tokens": 5}),
        ("difficulty", {"level": "normal", "value": 0.3, "easy_max": 0.15, "hard_min": 0.4}),
    ]
    # agreement: 4 samples cycling 5, 6, 5, 7: leader share 0.5, difficulty 0.5: hard.
    simulator.set_config(
        script(
            Rule(
                model="sim-small",
                replies=[
                    "The answer is 5.",
                    "The answer is 6.",
                    "The answer is 5.",
                    "The answer is 7.",
                ],
            ),
            Rule(model="sim-large", replies=["The answer is 5."]),
        )
    )
    job = await solve(rt, {"kind": "difficulty_router", "probe": "agreement"})
    assert job.answer == "5"
    assert job.events[:2] == [
        ("probe", {"probe": "agreement", "value": 0.5, "votes": {"5": 2, "6": 1, "7": 1}}),
        ("difficulty", {"level": "hard", "value": 0.5, "easy_max": 0.0, "hard_min": 0.5}),
    ]
    assert (job.tokens("small"), job.tokens("large")) == (20, 20)


async def test_custom_children_and_thresholds(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(script(*RULES))
    # 1.0 nats is easy under easy_max = 1.2; the easy child is direct on the large model.
    job = await solve(
        rt,
        {"kind": "difficulty_router", "easy_max": 1.2, "easy": {"kind": "direct", "role": "large"}},
        question="What is 12 * 12?",
    )
    assert job.events_named("difficulty")[0]["level"] == "easy"
    assert job.answer == "391"
    assert (job.tokens("small"), job.tokens("large")) == (1, 5)


async def test_tight_budget_falls_back_to_the_probe_answer(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(script(*RULES))
    # The attempt probe (at most 8 tokens, uses 5; difficulty 0.05: easy) fits in 10; the
    # easy child's direct
    # call cannot reserve 16 of the 5 left, so the probe's own answer is returned.
    job = await solve(
        rt,
        {"kind": "difficulty_router", "probe": "attempt", "probe_tokens": 8},
        budget={"max_tokens": 10},
    )
    assert job.result["budget_exhausted"] is True
    assert job.tokens() == 5 <= 10
    assert job.answer == "5"
    assert [n for n, _ in job.events] == ["probe", "difficulty", "budget_exhausted", "fallback"]


async def test_strict_replay_makes_no_model_calls(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(script(*RULES))
    job = await solve(rt, {"kind": "difficulty_router"}, question="What is 12 * 12?")
    before = simulator.stats.requests
    again = await replay(rt, job.job_id)
    assert simulator.stats.requests == before
    assert again.result == job.result
    assert again.events == job.events


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"probe": "vibes"}, "strategy.probe"),
        ({"hard_min": 0.2}, "strategy.hard_min"),  # below the entropy probe's easy_max 0.5
        ({"easy_max": 0.9, "hard_min": 0.8}, "strategy.hard_min"),
        ({"probe_samples": 1}, "strategy.probe_samples"),
        ({"hard": {"kind": "self_consistency", "n": 0}}, "strategy.hard.n"),
    ],
)
async def test_bad_params_name_the_field(rt: Runtime, params: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        await submit_job(
            rt.sessions,
            rt.pools,
            question=QUESTION,
            strategy={"kind": "difficulty_router", **params},
        )
    assert caught.value.field == field
