"""``budget_forcing`` (s1) against the scripted simulator.

The first thinking call continues "<think>\\n"; an extension continues the thinking with
the cue at its end ("...\\nWait"); the answer call continues "...</think>\\n\\n". Token
counts by the simulator's tokenizer: "2 + 3 = 5." is 6 tokens, and
", let me check: 5 - 3 = 2, so yes." is 14 (, / let / me / check / : / 5 / - / 3 / = / 2 /
, / so / yes / .).
"""

from __future__ import annotations

from typing import Any

import pytest

from core.db import repo
from core.runtime import Runtime
from core.simulator.config import Rule
from core.simulator.server import Simulator
from strategies.registry import SpecError, parse_spec
from tests.strategies.helpers import script, solve

THINKING = r"assistant: <think>\n\Z"
EXTENDING = r"assistant: <think>\n.*\n(?:Wait|Hmm)\Z"
ANSWERING = r"assistant: <think>\n.*</think>\n\n\Z"

FIRST = "2 + 3 = 5.</think>\n\nThe answer is 5."
CHECK = ", let me check: 5 - 3 = 2, so yes.</think>"


def rules(first: str = FIRST, check: str = CHECK) -> list[Rule]:
    return [
        Rule(match=ANSWERING, replies=["The answer is 5."]),
        Rule(match=EXTENDING, replies=[check]),
        Rule(match=THINKING, replies=[first]),
    ]


async def requests_of(rt: Runtime, job_id: str) -> list[dict[str, Any]]:
    async with rt.sessions() as session:
        return [dict(call.request) for call in await repo.list_calls(session, job_id)]


def spec(**params: Any) -> dict[str, Any]:
    return {"kind": "budget_forcing", "answer_tokens": 16, **params}


async def test_an_early_end_is_replaced_by_the_cue(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(script(*rules()))
    job = await solve(rt, spec(min_thinking_tokens=10, max_thinking_tokens=40))

    assert job.answer == "5"
    assert job.events == [
        ("extended", {"tokens": 6, "extension": 1, "cue": "Wait"}),
        ("thinking_end", {"tokens": 20, "extensions": 1}),
        ("answer", {"answer": "5", "tokens": 5, "finish_reason": "stop"}),
    ]
    first, extension, answering = await requests_of(rt, job.job_id)
    assert first["messages"][-1]["content"] == "<think>\n"
    assert extension["messages"][-1]["content"] == "<think>\n2 + 3 = 5.\nWait"
    # Each thinking call asks for what is left of the maximum.
    assert (first["max_tokens"], extension["max_tokens"]) == (40, 34)
    assert extension["stop"] == ["</think>"] and extension["continue_final_message"] is True
    assert answering["messages"][-1]["content"] == (
        "<think>\n2 + 3 = 5.\nWait, let me check: 5 - 3 = 2, so yes.\n</think>\n\n"
    )
    assert answering["max_tokens"] == 16
    assert job.result["details"] == {
        "thinking_tokens": 20,
        "extensions": 1,
        "forced_end": False,
        "answer_tokens": 5,
        "answer_from_thinking": False,
    }


async def test_the_maximum_forces_the_end_even_during_an_extension(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(script(*rules()))
    job = await solve(rt, spec(min_thinking_tokens=10, max_thinking_tokens=12))

    # 6 tokens, extended; the extension may use the 6 left: ", let me check: 5".
    assert job.events == [
        ("extended", {"tokens": 6, "extension": 1, "cue": "Wait"}),
        ("forced_end", {"tokens": 12, "budget": 12}),
        ("answer", {"answer": "5", "tokens": 5, "finish_reason": "stop"}),
    ]
    _, extension, answering = await requests_of(rt, job.job_id)
    assert extension["max_tokens"] == 6
    assert answering["messages"][-1]["content"] == (
        "<think>\n2 + 3 = 5.\nWait, let me check: 5\n</think>\n\n"
    )
    assert job.tokens("small") == 12 + 5


async def test_thinking_that_runs_long_is_forced_to_end_at_the_maximum(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(
        script(*rules(first="Two plus three: I count up from two, three, four, five."))
    )
    job = await solve(rt, spec(min_thinking_tokens=4, max_thinking_tokens=8))

    assert job.events == [
        ("forced_end", {"tokens": 8, "budget": 8}),
        ("answer", {"answer": "5", "tokens": 5, "finish_reason": "stop"}),
    ]
    _, answering = await requests_of(rt, job.job_id)
    assert answering["messages"][-1]["content"] == (
        "<think>\nTwo plus three: I count up from\n</think>\n\n"
    )


async def test_extensions_stop_at_max_extensions(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(script(*rules()))
    job = await solve(rt, spec(min_thinking_tokens=50, max_thinking_tokens=100, max_extensions=2))

    assert [(name, attrs.get("tokens")) for name, attrs in job.events] == [
        ("extended", 6),
        ("extended", 20),
        ("thinking_end", 34),
        ("answer", 5),
    ]
    assert job.events_named("thinking_end") == [{"tokens": 34, "extensions": 2}]
    calls = await requests_of(rt, job.job_id)
    assert [c["max_tokens"] for c in calls] == [100, 94, 80, 16]
    assert calls[2]["messages"][-1]["content"] == (
        "<think>\n2 + 3 = 5.\nWait, let me check: 5 - 3 = 2, so yes.\nWait"
    )


async def test_no_extensions_without_a_minimum(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(script(*rules()))
    job = await solve(rt, spec(min_thinking_tokens=0, max_thinking_tokens=40))
    assert [name for name, _ in job.events] == ["thinking_end", "answer"]
    assert simulator.stats.requests == 2


async def test_the_cue_is_a_parameter(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(script(*rules()))
    job = await solve(
        rt, spec(min_thinking_tokens=10, max_thinking_tokens=40, continuation_cue="Hmm")
    )
    assert job.events_named("extended") == [{"tokens": 6, "extension": 1, "cue": "Hmm"}]
    _, extension, _ = await requests_of(rt, job.job_id)
    assert extension["messages"][-1]["content"] == "<think>\n2 + 3 = 5.\nHmm"


async def test_a_job_budget_keeps_the_answer_budget(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(script(*rules()))
    job = await solve(
        rt,
        spec(min_thinking_tokens=10, max_thinking_tokens=40),
        budget={"max_tokens": 30},
    )

    # 30 left, 16 kept for the answer: the first call may think 14 tokens; after 6 of
    # them, 24 are left and the extension may use 8.
    assert job.events == [
        ("thinking_clamped", {"asked": 40, "granted": 14, "kept_for_answer": 16}),
        ("extended", {"tokens": 6, "extension": 1, "cue": "Wait"}),
        ("thinking_clamped", {"asked": 34, "granted": 8, "kept_for_answer": 16}),
        ("forced_end", {"tokens": 14, "budget": 40}),
        ("answer", {"answer": "5", "tokens": 5, "finish_reason": "stop"}),
    ]
    assert job.tokens() == 19
    assert job.answer == "5"


def test_min_above_max_is_rejected_with_both_values() -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(spec(min_thinking_tokens=100, max_thinking_tokens=50))
    assert "min_thinking_tokens (100) must not exceed max_thinking_tokens (50)" in str(err.value)
