"""``elastic`` against the scripted simulator, and the shared think-then-answer helpers.

Token counts follow the simulator's tokenizer (a word with its leading whitespace, or one
punctuation character): "2 + 3 = 5." is 2 / + / 3 / = / 5 / . = 6 tokens.
"""

from __future__ import annotations

from typing import Any

from core.db import repo
from core.runtime import Runtime
from core.simulator.config import Rule
from core.simulator.server import Simulator
from strategies.protocol import Choice, ModelRequest, Usage
from strategies.shared.thinking import (
    INSTRUCT_SYSTEM,
    REASONING_INSTRUCTION,
    answer_prefill,
    append_cue,
    check_controls,
)
from tests.strategies.helpers import QUESTION, replay, script, solve

# Rules match the prefilled assistant text: the thinking call ends with "<think>\n",
# the answer call with "</think>\n\n".
THINKING = r"assistant: <think>\n\Z"
ANSWERING = r"assistant: <think>\n.*</think>\n\n\Z"


async def requests_of(rt: Runtime, job_id: str) -> list[dict[str, Any]]:
    """The journaled requests of a job, in call order (defaults left out)."""
    async with rt.sessions() as session:
        return [dict(call.request) for call in await repo.list_calls(session, job_id)]


async def test_thinks_then_answers_with_separate_budgets(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(
        script(
            Rule(match=ANSWERING, replies=["The answer is 5."]),
            Rule(match=THINKING, replies=["2 + 3 = 5.</think>\n\nThe answer is 5."]),
        )
    )
    job = await solve(rt, {"kind": "elastic", "thinking_tokens": 50, "answer_tokens": 20})

    assert job.answer == "5"
    assert job.events == [
        ("thinking_end", {"tokens": 6}),
        ("answer", {"answer": "5", "tokens": 5, "finish_reason": "stop"}),
    ]
    thinking, answering = await requests_of(rt, job.job_id)
    assert thinking["messages"] == [
        {"role": "system", "content": INSTRUCT_SYSTEM},
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "<think>\n"},
    ]
    assert thinking["continue_final_message"] is True
    assert thinking["stop"] == ["</think>"]
    assert thinking["max_tokens"] == 50
    assert answering["messages"][-1] == {
        "role": "assistant",
        "content": "<think>\n2 + 3 = 5.\n</think>\n\n",
    }
    assert answering["continue_final_message"] is True
    assert answering["max_tokens"] == 20
    assert "stop" not in answering
    assert job.result["text"] == "<think>\n2 + 3 = 5.\n</think>\n\nThe answer is 5."
    assert job.result["details"] == {
        "thinking_tokens": 6,
        "forced_end": False,
        "answer_tokens": 5,
        "answer_from_thinking": False,
    }
    assert job.tokens("small") == 11


async def test_thinking_that_hits_its_budget_is_ended_by_the_client(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(
        script(
            Rule(match=ANSWERING, replies=["The answer is 5."]),
            Rule(
                match=THINKING,
                replies=["First, 2 plus 3: counting up from 2 gives 3, 4, 5.</think>"],
            ),
        )
    )
    job = await solve(rt, {"kind": "elastic", "thinking_tokens": 7, "answer_tokens": 9})

    # First / , / 2 / plus / 3 / : / counting = 7 tokens, cut by max_tokens.
    assert job.events == [
        ("forced_end", {"tokens": 7, "budget": 7}),
        ("answer", {"answer": "5", "tokens": 5, "finish_reason": "stop"}),
    ]
    thinking, answering = await requests_of(rt, job.job_id)
    assert thinking["max_tokens"] == 7
    assert answering["max_tokens"] == 9
    assert answering["messages"][-1]["content"] == (
        "<think>\nFirst, 2 plus 3: counting\n</think>\n\n"
    )
    assert job.answer == "5"
    assert job.result["details"]["forced_end"] is True
    assert job.tokens("small") == 7 + 5


async def test_an_answer_phase_without_an_answer_falls_back_to_the_thinking(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(
        script(
            Rule(
                match=ANSWERING,
                replies=["So the sum of two and three is five. The answer is 5."],
            ),
            Rule(match=THINKING, replies=["2 + 3 = 5.</think>"]),
        )
    )
    job = await solve(rt, {"kind": "elastic", "thinking_tokens": 50, "answer_tokens": 4})

    # The answer is cut at 4 tokens ("So the sum of"): no number in it.
    assert job.events == [
        ("thinking_end", {"tokens": 6}),
        ("answer", {"answer": None, "tokens": 4, "finish_reason": "length"}),
        ("answer_from_thinking", {"answer": "5"}),
    ]
    assert job.answer == "5"
    assert job.result["text"].endswith("</think>\n\nSo the sum of")
    assert job.result["details"]["answer_from_thinking"] is True


async def test_reasoning_format_uses_the_r1_prompt(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(
        script(
            Rule(match=ANSWERING, replies=["The sum is \\boxed{5}."]),
            Rule(match=THINKING, replies=["2 + 3 = 5.</think>"]),
        )
    )
    job = await solve(rt, {"kind": "elastic", "format": "reasoning"})

    assert job.answer == "5"
    thinking, _ = await requests_of(rt, job.job_id)
    assert thinking["messages"] == [
        {"role": "user", "content": f"{QUESTION}\n{REASONING_INSTRUCTION}"},
        {"role": "assistant", "content": "<think>\n"},
    ]
    assert thinking["max_tokens"] == 512  # the default thinking budget


async def test_a_server_that_opens_a_new_turn_is_reported(
    rt: Runtime, simulator: Simulator
) -> None:
    # The reply does not continue the "<think>\n" prefill, so the simulator returns it
    # whole, as a server that ignored continue_final_message would.
    simulator.set_config(
        script(
            Rule(match=ANSWERING, replies=["The answer is 5."]),
            Rule(match=THINKING, replies=["<think> 2 + 3 = 5.</think>"]),
        )
    )
    job = await solve(rt, {"kind": "elastic"})

    ignored = job.events_named("control_ignored")
    assert [(e["control"], e["phase"]) for e in ignored] == [("continue_final_message", "thinking")]
    # < / think / > / 2 / + / 3 / = / 5 / . = 9 tokens charged.
    assert job.events_named("thinking_end") == [{"tokens": 9}]
    _, answering = await requests_of(rt, job.job_id)
    assert answering["messages"][-1]["content"] == "<think>\n2 + 3 = 5.\n</think>\n\n"
    assert job.answer == "5"


async def test_a_job_budget_never_eats_the_answer_budget(rt: Runtime, simulator: Simulator) -> None:
    long_thinking = (
        "I will add the numbers one at a time, starting from two and counting up three "
        "more steps to reach the sum.</think>"
    )
    simulator.set_config(
        script(
            Rule(match=ANSWERING, replies=["The answer is 5."]),
            Rule(match=THINKING, replies=[long_thinking]),
        )
    )
    job = await solve(
        rt,
        {"kind": "elastic", "thinking_tokens": 100, "answer_tokens": 10},
        budget={"max_tokens": 30},
    )

    # 30 left, 10 kept for the answer: the thinking may use 20.
    assert job.events == [
        ("thinking_clamped", {"asked": 100, "granted": 20, "kept_for_answer": 10}),
        ("forced_end", {"tokens": 20, "budget": 20}),
        ("answer", {"answer": "5", "tokens": 5, "finish_reason": "stop"}),
    ]
    thinking, answering = await requests_of(rt, job.job_id)
    assert (thinking["max_tokens"], answering["max_tokens"]) == (20, 10)
    assert job.answer == "5"
    assert job.tokens() == 25


async def test_out_of_calls_before_the_answer_uses_the_thinking(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(script(Rule(match=THINKING, replies=["2 + 3 = 5.</think>"])))
    job = await solve(rt, {"kind": "elastic"}, budget={"max_calls": 1})

    assert job.events == [
        ("thinking_end", {"tokens": 6}),
        ("budget_exhausted", {"what": "calls", "phase": "answer"}),
        ("answer_from_thinking", {"answer": "5"}),
    ]
    assert job.answer == "5"
    assert job.result["budget_exhausted"] is True
    assert simulator.stats.requests == 1


async def test_strict_replay_reproduces_the_job_with_no_model_calls(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(
        script(
            Rule(match=ANSWERING, replies=["The answer is 5."]),
            Rule(match=THINKING, replies=["First, 2 plus 3: counting up gives 5.</think>"]),
        )
    )
    job = await solve(rt, {"kind": "elastic", "thinking_tokens": 7})
    before = simulator.stats.requests
    child = await replay(rt, job.job_id)
    assert simulator.stats.requests == before
    assert child.result == job.result
    assert child.events == job.events


# -- the shared helpers, on hand-built replies (a simulator always honours controls) ------


def _request(**fields: Any) -> ModelRequest:
    return ModelRequest(
        messages=[
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": "<think>\n"},
        ],
        continue_final_message=True,
        **fields,
    )


def test_check_controls_accepts_a_reply_that_honours_every_control() -> None:
    checked = check_controls(
        _request(stop=["</think>"], max_tokens=8),
        Choice(index=0, text="2 + 3 = 5.", finish_reason="stop"),
        Usage(completion_tokens=6),
    )
    assert (checked.text, checked.finish_reason, checked.ignored) == ("2 + 3 = 5.", "stop", [])


def test_check_controls_cuts_text_past_an_ignored_stop_string() -> None:
    checked = check_controls(
        _request(stop=["</think>"], max_tokens=64),
        Choice(index=0, text="2 + 3 = 5.</think>\n\nThe answer is 5.", finish_reason="length"),
        Usage(completion_tokens=16),
    )
    assert checked.text == "2 + 3 = 5."
    assert checked.finish_reason == "stop"
    assert [i.control for i in checked.ignored] == ["stop"]
    assert "18 characters after it" in checked.ignored[0].detail


def test_check_controls_reports_more_tokens_than_max_tokens() -> None:
    checked = check_controls(
        _request(stop=["</think>"], max_tokens=4),
        Choice(index=0, text="2 + 3 = 5.", finish_reason="stop"),
        Usage(completion_tokens=6),
    )
    assert checked.text == "2 + 3 = 5."
    assert checked.finish_reason == "length"
    assert [i.control for i in checked.ignored] == ["max_tokens"]
    assert "6 completion tokens reported for max_tokens=4" in checked.ignored[0].detail


def test_check_controls_removes_an_echoed_prefill() -> None:
    checked = check_controls(
        _request(max_tokens=8),
        Choice(index=0, text="<think>\n2 + 3 = 5.", finish_reason="stop"),
        Usage(completion_tokens=6),
    )
    assert checked.text == "2 + 3 = 5."
    assert [i.control for i in checked.ignored] == ["continue_final_message"]


def test_answer_prefill_closes_the_thinking_once() -> None:
    assert answer_prefill("2 + 3 = 5.\n") == "<think>\n2 + 3 = 5.\n</think>\n\n"
    assert answer_prefill("") == "<think>\n\n</think>\n\n"


def test_the_cue_starts_a_new_line_unless_the_thinking_ended_one() -> None:
    assert append_cue("2 + 3 = 5.", "Wait") == "2 + 3 = 5.\nWait"
    assert append_cue("2 + 3 = 5.\n", "Wait") == "2 + 3 = 5.\nWait"
    assert append_cue("", "Wait") == "Wait"
