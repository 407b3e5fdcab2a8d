"""``plan_and_budget`` against the scripted simulator; plan parsing and allocation by hand.

Token counts by the simulator's tokenizer. The plan reply below is 36 tokens:
Sure / ! / Here / is / the / plan / : (7), then per line a newline-led number, "." and
" [", digit, "]" (5) and the words and "?" of the sub-question (10 and 9).
"""

from __future__ import annotations

from typing import Any

import pytest

from core.db import repo
from core.runtime import Runtime
from core.simulator.config import Rule
from core.simulator.server import Simulator
from strategies.budgeted_thinking.plan_and_budget import (
    PLAN_EXAMPLE_REPLY,
    PLAN_SYSTEM,
    STEP_SYSTEM,
    allocate,
    parse_plan,
)
from tests.strategies.helpers import script, solve

QUESTION = "Tom has 2 apples and buys 3 more. He eats 1. How many apples are left?"
Q1 = "How many apples does Tom have after buying?"
Q2 = "How many apples are left after he eats one?"
PLAN = f"Sure! Here is the plan:\n1. [3] {Q1}\n2. [1] {Q2}"
STEP1 = "He has 2 + 3 = 5 apples. The answer is 5."  # 14 tokens
STEP2 = "5 - 1 = 4. The answer is 4."  # 11 tokens
SYNTHESIS = "Tom has 4 apples left. The answer is 4."  # 11 tokens
DIRECT = "2 + 3 - 1 = 4. The answer is 4."  # 13 tokens


def rules(plan: str = PLAN) -> list[Rule]:
    return [
        Rule(match=r"system: You split", replies=[plan]),
        Rule(match="Current sub-question: " + Q1.replace("?", r"\?"), replies=[STEP1]),
        Rule(match="Current sub-question: " + Q2.replace("?", r"\?"), replies=[STEP2]),
        Rule(match=r"Using these results", replies=[SYNTHESIS]),
        Rule(match=r"system: You are a careful problem solver\. Reason", replies=[DIRECT]),
    ]


def spec(**params: Any) -> dict[str, Any]:
    base = {
        "kind": "plan_and_budget",
        "total_tokens": 400,
        "plan_tokens": 100,
        "synthesis_tokens": 50,
        "min_step_tokens": 20,
        "schedule": "linear",
    }
    return {**base, **params}


async def requests_of(rt: Runtime, job_id: str) -> list[dict[str, Any]]:
    async with rt.sessions() as session:
        return [dict(call.request) for call in await repo.list_calls(session, job_id)]


async def test_plans_allocates_solves_and_combines(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(script(*rules()))
    job = await solve(rt, spec(), question=QUESTION)

    # Steps get 400 - 36 (plan) - 50 (synthesis) = 314 tokens: 20 each, and 274 split by
    # difficulty x linear decay: 3 x 2/2 and 1 x 1/2 -> 234.86 + 39.14 -> 235 + 39.
    assert job.answer == "4"
    assert job.events == [
        (
            "plan",
            {
                "sub_questions": [Q1, Q2],
                "complexities": [3.0, 1.0],
                "rated": [True, True],
                "dropped": 0,
                "tokens": 36,
            },
        ),
        ("allocation", {"schedule": "linear", "tokens": [255, 59], "total": 314}),
        (
            "sub_answer",
            {"step": 1, "answer": "5", "tokens": 14, "allocated": 255, "finish_reason": "stop"},
        ),
        (
            "sub_answer",
            {"step": 2, "answer": "4", "tokens": 11, "allocated": 59, "finish_reason": "stop"},
        ),
        ("synthesis", {"answer": "4", "tokens": 11, "finish_reason": "stop"}),
    ]
    calls = await requests_of(rt, job.job_id)
    assert [c["max_tokens"] for c in calls] == [100, 255, 59, 50]
    assert calls[2]["messages"] == [
        {"role": "system", "content": STEP_SYSTEM},
        {
            "role": "user",
            "content": f"Problem: {QUESTION}\n\nSolved so far:\n1. {Q1}\n{STEP1}\n\n"
            f"Current sub-question: {Q2}",
        },
    ]
    assert f"1. {Q1}\n{STEP1}\n2. {Q2}\n{STEP2}" in calls[3]["messages"][1]["content"]
    assert job.tokens() == 36 + 14 + 11 + 11
    assert job.result["details"] == {"steps": 2, "allocation": [255, 59]}


async def test_the_plan_prompt_shows_one_worked_example(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(script(*rules()))
    job = await solve(rt, spec(max_steps=3), question=QUESTION)
    plan = (await requests_of(rt, job.job_id))[0]
    assert [m["role"] for m in plan["messages"]] == ["system", "user", "assistant", "user"]
    assert plan["messages"][0]["content"] == PLAN_SYSTEM
    assert plan["messages"][2]["content"] == PLAN_EXAMPLE_REPLY
    assert plan["messages"][3]["content"] == f"Problem: {QUESTION}\nAt most 3 sub-questions."


async def test_a_plan_that_copies_the_example_is_unparsable(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(script(*rules(plan=PLAN_EXAMPLE_REPLY)))
    job = await solve(rt, spec(), question=QUESTION)
    assert [name for name, _ in job.events] == ["plan_unparsable", "answer"]
    assert job.answer == "4"


async def test_the_step_budget_can_be_stated_in_the_prompt(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(script(*rules()))
    job = await solve(rt, spec(budget_hint=True), question=QUESTION)
    steps = (await requests_of(rt, job.job_id))[1:3]
    assert [s["messages"][1]["content"].splitlines()[-1] for s in steps] == [
        "Answer within 255 tokens.",
        "Answer within 59 tokens.",
    ]


async def test_the_job_budget_caps_the_allocation(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(script(*rules()))
    job = await solve(rt, spec(), question=QUESTION, budget={"max_tokens": 200})

    # 200 - 36 = 164 left in the job < 400 - 36: steps get 164 - 50 = 114; the 74 above the
    # minimums split 63.43 + 10.57 -> 63 + 11 (largest remainder).
    assert job.events_named("allocation") == [
        {"schedule": "linear", "tokens": [83, 31], "total": 114}
    ]
    assert job.answer == "4"
    assert job.tokens() <= 200


async def test_another_role_can_plan(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(script(*rules()))
    job = await solve(rt, spec(planner_role="large", schedule="uniform"), question=QUESTION)

    # uniform: 274 split 3 : 1 -> 205.5 + 68.5 -> 206 + 68 (a tie goes to the earlier step).
    assert job.events_named("allocation")[0]["tokens"] == [226, 88]
    assert (job.calls_to("large"), job.calls_to("small")) == (1, 3)
    assert job.answer == "4"


async def test_an_unparsable_plan_falls_back_to_solving_directly(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(script(*rules(plan="I think we should just add.")))
    job = await solve(rt, spec(), question=QUESTION)

    # The plan used 7 tokens; the direct solve may use the other 393.
    assert job.events == [
        ("plan_unparsable", {"tokens": 7, "text": "I think we should just add."}),
        ("answer", {"answer": "4", "tokens": 13, "finish_reason": "stop"}),
    ]
    calls = await requests_of(rt, job.job_id)
    assert [c["max_tokens"] for c in calls] == [100, 393]
    assert job.answer == "4"
    assert job.result["details"] == {"fallback": "direct"}


async def test_a_plan_the_budget_cannot_pay_for_is_solved_directly(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(script(*rules()))
    job = await solve(rt, spec(min_step_tokens=40), question=QUESTION, budget={"max_tokens": 120})

    # 120 - 36 = 84 left; minus 50 for the synthesis, 34 < 2 x 40.
    assert [name for name, _ in job.events] == ["plan", "plan_unaffordable", "answer"]
    assert job.events_named("plan_unaffordable") == [
        {"steps": 2, "available": 34, "min_step_tokens": 40}
    ]
    assert [c["max_tokens"] for c in await requests_of(rt, job.job_id)] == [100, 84]
    assert job.answer == "4"


async def test_out_of_calls_mid_plan_returns_the_last_sub_answer(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(script(*rules()))
    job = await solve(rt, spec(), question=QUESTION, budget={"max_calls": 3})

    assert [name for name, _ in job.events][-2:] == ["sub_answer", "budget_exhausted"]
    assert job.events_named("budget_exhausted") == [{"what": "calls", "phase": "synthesis"}]
    assert job.answer == "4"
    assert job.result["budget_exhausted"] is True


def test_total_tokens_must_leave_room_for_a_step() -> None:
    from strategies.registry import SpecError, parse_spec

    with pytest.raises(SpecError) as err:
        parse_spec(spec(total_tokens=160))
    assert "must cover plan_tokens + synthesis_tokens + min_step_tokens (170)" in str(err.value)


# -- allocation, by hand: difficulties [2, 3, 1], 700 tokens, 50 minimum each -------------
# 550 tokens are split; shares are floored and the rounding loss goes to the largest
# fractional parts.


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        # weights 2, 3, 1 -> 183.33, 275, 91.67 -> +1 to the third
        ("uniform", [233, 325, 142]),
        # decay 1, 2/3, 1/3 -> weights 2, 2, 1/3 -> 253.85, 253.85, 42.31
        ("linear", [304, 304, 92]),
        # decay 1, 4/9, 1/9 -> weights 2, 4/3, 1/9 -> 319.35, 212.90, 17.74
        ("polynomial", [369, 263, 68]),
        # decay 1, 0.9, 0.81 -> weights 2, 2.7, 0.81 -> 199.64, 269.51, 80.85
        ("exponential", [250, 319, 131]),
        # decay 1.1, 0.6, 0.1 -> weights 2.2, 1.8, 0.1 -> 295.12, 241.46, 13.41
        ("cosine", [345, 292, 63]),
    ],
)
def test_allocation_by_schedule(schedule: Any, expected: list[int]) -> None:
    shares = allocate([2, 3, 1], 700, schedule, min_tokens=50)
    assert shares == expected
    assert sum(shares) == 700


def test_allocation_of_one_step_is_the_whole_budget() -> None:
    assert allocate([4], 123, "cosine", min_tokens=10) == [123]


def test_allocation_decays_by_position_when_difficulties_are_equal() -> None:
    shares = allocate([1, 1, 1, 1], 1000, "exponential", min_tokens=0, base=0.5)
    # 8 : 4 : 2 : 1 of 1000 -> 533.33, 266.67, 133.33, 66.67
    assert shares == [533, 267, 133, 67]


def test_allocation_below_the_minimums_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot give 3 steps 50 each"):
        allocate([1, 1, 1], 149, "uniform", min_tokens=50)


# -- plan parsing ---------------------------------------------------------------------------


def test_parse_plan_reads_the_asked_format() -> None:
    steps, dropped = parse_plan(PLAN, max_steps=5)
    assert [(s.question, s.difficulty, s.rated) for s in steps] == [
        (Q1, 3.0, True),
        (Q2, 1.0, True),
    ]
    assert dropped == 0


def test_parse_plan_reads_common_variants() -> None:
    text = "\n".join(
        [
            "Plan:",
            "**1.** [difficulty: 2] Find the price of one pen.",
            "2) (4) Multiply by the number of pens.",
            "3. Add the price of the books [3/5]",
            "4. Subtract the discount (difficulty 5)",
            "- [1] State the total.",
            "Step 6: Check the result",
        ]
    )
    steps, _ = parse_plan(text, max_steps=10)
    assert [(s.question, s.difficulty, s.rated) for s in steps] == [
        ("Find the price of one pen.", 2.0, True),
        ("Multiply by the number of pens.", 4.0, True),
        ("Add the price of the books", 3.0, True),
        ("Subtract the discount", 5.0, True),
        ("State the total.", 1.0, True),
        # No rating: the mean of the rated ones (2 + 4 + 3 + 5 + 1) / 5.
        ("Check the result", 3.0, False),
    ]


def test_parse_plan_clamps_truncates_and_stops_at_a_restart() -> None:
    text = "1. [9] A first thing?\n2. [0] A second thing?\n3. [2] A third thing?\n1. 5 apples"
    steps, dropped = parse_plan(text, max_steps=2)
    assert [(s.question, s.difficulty) for s in steps] == [
        ("A first thing?", 5.0),
        ("A second thing?", 1.0),
    ]
    assert dropped == 1


def test_parse_plan_without_sub_questions_is_empty() -> None:
    assert parse_plan("I think we should just add.", max_steps=5) == ([], 0)
    assert parse_plan("1. [3]\n2. 42", max_steps=5) == ([], 0)
