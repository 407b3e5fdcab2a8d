"""compute_optimal: the most accurate measured arm that fits the budget, per difficulty bin.

Table (synthetic): on easy problems direct-on-small and direct-on-large are equally
accurate (0.9) and small is cheaper (5 vs 12 tokens); on hard problems large is far
better (0.9 vs 0.3). The entropy probe reads 0.2 nats on "2 + 3" (easy under the default
0.5 / 1.5) and 2.0 on "17 * 23" (hard).
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from core.errors import InvalidInput
from core.jobs import submit_job
from core.runtime import Runtime
from core.simulator.config import Rule
from core.simulator.server import Simulator
from strategies.collaboration.compute_optimal import NoArmFits, TableArm, choose
from tests.strategies.helpers import script, solve

EASY_Q, HARD_Q = "What is 2 + 3?", "What is 17 * 23?"
SMALL = {"kind": "direct", "role": "small"}
LARGE = {"kind": "direct", "role": "large"}


def arm(
    label: str, spec: dict[str, Any], bin_: str | None, accuracy: float, tokens: float
) -> dict[str, Any]:
    return {"label": label, "spec": spec, "bin": bin_, "n": 10, "accuracy": accuracy,
            "mean_tokens": tokens}  # fmt: skip


TABLE = [
    arm("small", SMALL, "easy", 0.9, 5),
    arm("large", LARGE, "easy", 0.9, 12),
    arm("small", SMALL, "hard", 0.3, 5),
    arm("large", LARGE, "hard", 0.9, 12),
    arm("small", SMALL, None, 0.6, 5),
    arm("large", LARGE, None, 0.9, 12),
]
RULES = [
    Rule(model="sim-small", match=r"assistant: The answer is $" , replies=["The answer is 5."],
         first_token_entropy=0.2),
    Rule(model="sim-small", match=re.escape(HARD_Q) + ".*assistant: The answer is $",
         replies=["The answer is 391."], first_token_entropy=2.0),
    Rule(model="sim-small", match=re.escape(HARD_Q), replies=["The answer is 381."]),
    Rule(model="sim-large", match=re.escape(HARD_Q), replies=["17 * 23 = 391. The answer is 391."]),
    Rule(model="sim-small", replies=["The answer is 5."]),
    Rule(model="sim-large", replies=["2 + 3 = 5, so the answer is 5."]),
]  # fmt: skip
# The hard question's probe rule must win over the generic one.
RULES[0], RULES[1] = RULES[1], RULES[0]


def table() -> list[TableArm]:
    return [TableArm.model_validate(a) for a in TABLE]


def test_choose_per_bin_within_the_budget() -> None:
    assert choose(table(), 100, "easy").spec.model_dump()["role"] == "small"  # tie: cheaper
    assert choose(table(), 100, "hard").spec.model_dump()["role"] == "large"
    assert choose(table(), 8, "hard").spec.model_dump()["role"] == "small"  # large won't fit
    assert choose(table(), None, "hard").label == "large"
    # No bin rows for "normal": the overall rows decide.
    assert (choose(table(), 100, "normal").bin, choose(table(), 100, "normal").label) == (
        None,
        "large",
    )
    assert choose(table(), 100, None).label == "large"
    refusal = "no arm fits a budget of 4 tokens; the cheapest is 'small' at 5.0 mean tokens"
    with pytest.raises(NoArmFits, match=re.escape(refusal)):
        choose(table(), 4, "easy")
    only_bins = [a for a in table() if a.bin == "hard"]
    with pytest.raises(NoArmFits, match="no row for bin 'easy'"):
        choose(only_bins, 100, "easy")


async def test_probes_then_runs_the_best_arm_of_the_bin(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(script(*RULES))
    spec = {"kind": "compute_optimal", "arms": TABLE, "budget_tokens": 100}

    hard = await solve(rt, spec, question=HARD_Q)
    assert hard.answer == "391"
    assert hard.events_named("difficulty")[0]["level"] == "hard"
    choice = hard.events_named("choice")[0]
    assert (choice["label"], choice["level"], choice["budget"], choice["fits"]) == (
        "large",
        "hard",
        100,
        2,
    )
    assert (hard.calls_to("small"), hard.calls_to("large")) == (1, 1)  # probe, then large
    assert hard.result["details"]["chosen"] == "large"

    easy = await solve(rt, spec, question=EASY_Q)
    assert easy.answer == "5"
    assert easy.events_named("choice")[0]["label"] == "small"
    assert (easy.calls_to("small"), easy.calls_to("large")) == (2, 0)


async def test_the_job_budget_is_the_budget(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(script(*RULES))
    # Large measured at 40 tokens on hard problems: of a 25-token job budget the probe
    # spends 1, and 24 do not fit 40, so the small model answers (wrongly).
    costly = [{**a, "mean_tokens": 40} if a["label"] == "large" else a for a in TABLE]
    job = await solve(rt, {"kind": "compute_optimal", "arms": costly}, question=HARD_Q,
                      budget={"max_tokens": 25})  # fmt: skip
    choice = job.events_named("choice")[0]
    assert (choice["budget"], choice["label"]) == (24, "small")
    assert job.answer == "381"
    assert job.tokens() <= 25


async def test_nothing_fits_ends_without_an_answer(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(script(*RULES))
    job = await solve(
        rt, {"kind": "compute_optimal", "arms": TABLE, "budget_tokens": 3}, question=HARD_Q
    )
    assert job.answer is None and job.result["budget_exhausted"] is True
    refusal = job.events_named("no_arm_fits")[0]
    assert "no arm fits a budget of 3 tokens" in refusal["reason"]
    assert job.calls_to("large") == 0


async def test_a_table_without_bins_needs_no_probe(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(script(*RULES))
    overall = [a for a in TABLE if a["bin"] is None]
    job = await solve(rt, {"kind": "compute_optimal", "arms": overall, "budget_tokens": 6})
    assert job.events_named("probe") == []
    assert job.events_named("choice")[0]["label"] == "small"
    assert (job.calls_to("small"), job.calls_to("large")) == (1, 0)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"arms": []}, "strategy.arms"),
        ({"arms": [{**TABLE[0], "accuracy": 1.5}]}, "strategy.arms.0.accuracy"),
        ({"arms": [{**TABLE[0], "spec": {"kind": "nope"}}]}, "strategy.arms.0.spec.kind"),
        ({"arms": TABLE, "difficulty": "medium"}, "strategy.difficulty"),
    ],
)
async def test_bad_params_name_the_field(rt: Runtime, params: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        await submit_job(
            rt.sessions, rt.pools, question=EASY_Q, strategy={"kind": "compute_optimal", **params}
        )
    assert caught.value.field == field
