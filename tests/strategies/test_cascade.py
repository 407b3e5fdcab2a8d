"""cascade against two scripted models: escalate on disagreement or low confidence.

Simulator tokens: "The answer is N." = 5; "2 + 3 = 5. The answer is 5." = 11. Every
token has logprob -0.05 unless a rule says otherwise, so a sample's confidence
exp(mean token logprob) is e^-0.05 = 0.9512.
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

SPLIT = ["The answer is 6.", "The answer is 5.", "The answer is 6.", "The answer is 7."]
LARGE = Rule(model="sim-large", replies=["2 + 3 = 5. The answer is 5."])


def decisions(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for name, a in events:
        if name == "sample":
            out.append((name, a["index"], a["answer"], a["confidence"]))
        elif name == "agreement":
            out.append((name, a["share"], a["votes"], a["samples"], a["threshold"]))
        elif name == "confidence":
            out.append((name, a["value"], a["source"], a["threshold"]))
        elif name in ("escalate",):
            out.append((name, a["reason"], a["answer"]))
        elif name in ("accept",):
            out.append((name, a["answer"]))
        elif name == "answer":
            out.append((name, a["role"], a["answer"]))
        elif name == "final":
            out.append((name, a["answer"], a["source"]))
        else:
            out.append((name,))
    return out


async def test_escalates_when_the_small_samples_disagree(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(script(Rule(model="sim-small", replies=SPLIT), LARGE))
    job = await solve(rt, {"kind": "cascade"})

    assert job.answer == "5"
    assert decisions(job.events) == [
        ("sample", 0, "6", 0.9512),
        ("sample", 1, "5", 0.9512),
        ("sample", 2, "6", 0.9512),
        ("sample", 3, "7", 0.9512),
        ("agreement", 0.5, {"6": 2, "5": 1, "7": 1}, 4, 0.75),
        ("confidence", 0.9512, "logprobs", None),
        ("escalate", "agreement", "6"),
        ("answer", "large", "5"),
        ("final", "5", "large"),
    ]
    assert (job.tokens("small"), job.calls_to("small")) == (20, 1)
    assert (job.tokens("large"), job.calls_to("large")) == (11, 1)
    assert job.result["details"]["escalated"] is True


async def test_accepts_when_the_small_samples_agree(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(script(Rule(model="sim-small", replies=["The answer is 4."]), LARGE))
    job = await solve(rt, {"kind": "cascade"})

    assert job.answer == "4"
    assert decisions(job.events)[4:] == [
        ("agreement", 1.0, {"4": 4}, 4, 0.75),
        ("confidence", 0.9512, "logprobs", None),
        ("accept", "4"),
        ("final", "4", "small"),
    ]
    assert (job.tokens("small"), job.tokens("large"), job.calls_to("large")) == (20, 0, 0)


async def test_escalates_on_low_confidence(rt: Runtime, simulator: Simulator) -> None:
    # Unanimous, but every token at logprob -0.5: confidence e^-0.5 = 0.6065 < 0.8.
    simulator.set_config(
        script(Rule(model="sim-small", replies=["The answer is 4."], token_logprob=-0.5), LARGE)
    )
    job = await solve(rt, {"kind": "cascade", "samples": 1, "min_confidence": 0.8})
    assert job.answer == "5"
    assert decisions(job.events)[1:4] == [
        ("agreement", 1.0, {"4": 1}, 1, 0.75),
        ("confidence", 0.6065, "logprobs", 0.8),
        ("escalate", "confidence", "4"),
    ]


async def test_share_attempts_shows_the_large_model_the_small_attempts(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(
        script(
            Rule(model="sim-small", replies=SPLIT),
            # Only a prompt that carries the attempts gets the checked answer.
            Rule(
                model="sim-large",
                match=r"Attempt 1 \(answer 6, 2 of 4 samples\):\nThe answer is 6\.\n\n"
                r"Attempt 2 \(answer 5, 1 of 4 samples\)",
                replies=["The answer is 5."],
            ),
            Rule(model="sim-large", replies=["The answer is 9."]),
        )
    )
    job = await solve(rt, {"kind": "cascade", "share_attempts": True})
    assert job.answer == "5"
    job = await solve(rt, {"kind": "cascade"})
    assert job.answer == "9"


async def test_child_strategies_in_both_stages(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(script(Rule(model="sim-small", replies=SPLIT[:3]), LARGE))
    job = await solve(
        rt,
        {
            "kind": "cascade",
            "small": {"kind": "self_consistency", "n": 3},
            "large": {"kind": "direct", "role": "large"},
        },
    )
    # 2 of 3 votes for 6 is below 0.75: escalated to the large child.
    assert job.answer == "5"
    assert [n for n, _ in job.events] == [
        "sample",
        "sample",
        "sample",
        "vote",
        "agreement",
        "escalate",
        "answer",
        "final",
    ]
    assert job.events_named("agreement")[0]["share"] == 0.6667
    children = [s.name for s in job.spans if s.kind == "strategy"]
    assert children == ["cascade", "self_consistency", "direct"]
    assert (job.tokens("small"), job.tokens("large")) == (15, 11)


async def test_tight_budget_keeps_the_small_answer(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(script(Rule(model="sim-small", replies=SPLIT), LARGE))
    # 4 samples of at most 6 tokens fit in 24; they use 20, and the large call cannot
    # reserve its 6 from the 4 left.
    job = await solve(rt, {"kind": "cascade", "max_tokens": 6}, budget={"max_tokens": 24})
    assert job.result["budget_exhausted"] is True
    assert job.tokens() == 20 <= 24
    assert job.calls_to("large") == 0
    assert job.answer == "6"
    assert [n for n, _ in job.events][-3:] == ["escalate", "budget_exhausted", "final"]
    assert job.events[-1][1] == {"answer": "6", "source": "small"}


async def test_strict_replay_makes_no_model_calls(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(script(Rule(model="sim-small", replies=SPLIT), LARGE))
    job = await solve(rt, {"kind": "cascade"})
    before = simulator.stats.requests
    again = await replay(rt, job.job_id)
    assert simulator.stats.requests == before
    assert again.result == job.result
    assert again.events == job.events


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"min_agreement": 1.5}, "strategy.min_agreement"),
        ({"min_confidence": 1.0}, "strategy.min_confidence"),
        ({"samples": 0}, "strategy.samples"),
        ({"small": {"kind": "self_consistency", "n": 0}}, "strategy.small.n"),
        ({"large": {"kind": "nope"}}, "strategy.large.kind"),
    ],
)
async def test_bad_params_name_the_field(rt: Runtime, params: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        await submit_job(
            rt.sessions, rt.pools, question=QUESTION, strategy={"kind": "cascade", **params}
        )
    assert caught.value.field == field
