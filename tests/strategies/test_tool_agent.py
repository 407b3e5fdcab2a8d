"""``tool_agent``: a ReAct loop with native function calling. The simulator plays the model
(scripted ``tool_calls``), the real ``python`` tool runs each call in the bubblewrap
sandbox, and every call is journaled (strict replay executes nothing)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from core.db import repo
from core.runtime import Runtime
from core.settings import ToolSettings
from core.simulator.config import Rule, ScriptedToolCall
from core.simulator.server import Simulator
from tests.fixtures.runtime import simulator_settings
from tests.fixtures.sandbox import require_sandbox
from tests.strategies.helpers import SolvedJob, replay, script, solve

QUESTION = "A baker makes 12 muffins in the morning and 3 times as many later. How many in all?"
SPEC = {"kind": "tool_agent"}
MCP_SERVER = Path(__file__).resolve().parents[1] / "fixtures" / "mcp_server.py"


def python(code: str) -> ScriptedToolCall:
    return ScriptedToolCall(name="python", arguments={"code": code})


def tool_calls(job: SolvedJob) -> list[dict[str, object]]:
    return [s.attributes for s in job.spans if s.kind == "tool_call"]


async def test_the_agent_reads_each_result_before_its_next_call(
    rt: Runtime, simulator: Simulator
) -> None:
    require_sandbox()
    simulator.set_config(
        script(
            # Rules are tried in order: the latest tool result decides the next turn.
            Rule(match="tool: 48", replies=["12 + 36 = 48. The answer is 48."]),
            Rule(match="tool: 36", replies=[""], tool_calls=[[python("print(12 + 36)")]]),
            Rule(match="muffins", replies=["Later: 3 * 12."],
                 tool_calls=[[python("print(3 * 12)")]]),
        )
    )  # fmt: skip
    job = await solve(rt, SPEC, question=QUESTION)
    assert job.answer == "48"
    assert [(c["output"], c["journal"]) for c in tool_calls(job)] == [
        ("36\n", "miss"), ("48\n", "miss"),
    ]  # fmt: skip
    assert [(name, a.get("tool_calls")) for name, a in job.events] == [
        ("step", ["python"]), ("step", ["python"]), ("answer", 2),
    ]  # fmt: skip
    assert job.calls_to("small") == 3
    # Each turn offered the tool as a function; the second saw the first call, with the
    # text that came with it, and its result answering it by id.
    async with rt.sessions() as session:
        journal = await repo.list_calls(session, job.job_id)
    turns = [row.request for row in journal if row.role == "small"]
    assert [t["tool_choice"] for t in turns] == ["auto", "auto", "auto"]
    assert turns[0]["tools"][0]["function"]["name"] == "python"
    called, answered = turns[1]["messages"][-2:]
    assert called["role"] == "assistant" and called["content"] == "Later: 3 * 12."
    (call,) = called["tool_calls"]
    assert call["function"] == {"name": "python", "arguments": '{"code":"print(3 * 12)"}'}
    assert answered == {"role": "tool", "tool_call_id": call["id"], "content": "36\n"}
    usage = job.outcome.usage or {}
    assert (usage["tool_calls"], usage["tool_executions"]) == (2, 2)


async def test_calls_made_in_one_turn_run_concurrently_and_replay_executes_none(
    rt: Runtime, simulator: Simulator
) -> None:
    require_sandbox()
    slow = "import time\ntime.sleep(0.3)\nprint({})"
    simulator.set_config(
        script(
            Rule(match="tool: 12.*tool: 36", replies=["The answer is 48."]),
            Rule(
                match="muffins",
                replies=[""],
                tool_calls=[[python(slow.format(12)), python(slow.format("3 * 12"))]],
            ),
        )
    )
    job = await solve(rt, SPEC, question=QUESTION)
    assert job.answer == "48"
    assert job.events[0] == ("step", {"step": 0, "tool_calls": ["python", "python"]})
    # Issued in the model's order (journal keys and tool messages follow it), and both
    # were running at once: each started before the other ended.
    async with rt.sessions() as session:
        spans = [s for s in await repo.list_spans(session, job.job_id) if s.kind == "tool_call"]
    assert [s.attributes["output"] for s in spans] == ["12\n", "36\n"]
    first, second = spans
    assert first.end_ts is not None and second.end_ts is not None
    assert first.start_ts < second.end_ts and second.start_ts < first.end_ts

    requests = simulator.stats.requests
    strict = await replay(rt, job.job_id)
    assert strict.answer == "48"
    assert simulator.stats.requests == requests  # no model request
    usage = strict.outcome.usage or {}
    assert (usage["tool_executions"], usage["tool_journal_hits"], usage["live_calls"]) == (0, 2, 0)


async def test_an_unknown_tool_and_bad_arguments_are_told_to_the_model(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(
        script(
            Rule(
                match="no tool named 'calculator'.*arguments of python are not valid JSON",
                replies=["I will do it by hand: 12 + 36 = 48. The answer is 48."],
            ),
            Rule(
                match="muffins",
                replies=[""],
                tool_calls=[[
                    ScriptedToolCall(name="calculator", arguments={"expression": "12*4"}),
                    ScriptedToolCall(name="python", arguments='{"code": "print(48)'),
                ]],
            ),
        )
    )  # fmt: skip
    job = await solve(rt, SPEC, question=QUESTION)
    assert job.answer == "48"
    assert tool_calls(job) == []  # neither call was executed
    (step,) = job.events_named("step")
    assert step["tool_calls"] == ["calculator", "python"]
    assert "no tool named 'calculator'" in step["refused"][0]
    assert "not valid JSON" in step["refused"][1]


async def test_the_last_turn_must_answer_and_a_spent_budget_keeps_the_last_output(
    rt: Runtime, simulator: Simulator
) -> None:
    require_sandbox()
    # A model that would call tools forever.
    simulator.set_config(
        script(
            Rule(match="No more tool calls", replies=["The answer is 48."]),
            Rule(match="muffins", replies=[""], tool_calls=[[python("print(48)")]]),
        )
    )
    job = await solve(rt, {**SPEC, "max_steps": 3}, question=QUESTION)
    assert job.answer == "48" and job.calls_to("small") == 3
    assert [n for n, _ in job.events] == ["step", "step", "answer"]
    assert len(tool_calls(job)) == 2

    # With one tool call allowed, the second is refused by the budget: the answer is
    # what the first printed, and the job says its budget ran out.
    spent = await solve(rt, SPEC, question=QUESTION, budget={"max_tool_calls": 1}, seed=8)
    assert spent.answer == "48" and spent.result["budget_exhausted"] is True
    assert spent.events_named("budget_exhausted")[0]["what"] == "tool_calls"
    assert spent.events_named("answer") == [
        {"answer": "48", "tool_calls": 1, "source": "last tool output"}
    ]
    assert (spent.outcome.usage or {})["tool_calls"] == 1
    executed, refused = tool_calls(spent)
    assert executed["ok"] is True and "BudgetExhausted" in str(refused["error"])


async def test_an_mcp_tool_is_offered_with_its_servers_schema(
    simulator: Simulator, sqlite_database_url: str, tmp_path: Path
) -> None:
    command = [sys.executable, str(MCP_SERVER), "--log", str(tmp_path / "server.log")]
    settings = simulator_settings(simulator.url, sqlite_database_url, tmp_path)
    settings = settings.model_copy(
        update={"tools": {"add": ToolSettings(command=command, timeout_s=10)}}
    )
    simulator.set_config(
        script(
            Rule(match="tool: 48", replies=["The answer is 48."]),
            Rule(
                match="muffins",
                replies=[""],
                tool_calls=[[ScriptedToolCall(name="add", arguments={"a": 12, "b": 36})]],
            ),
        )
    )
    async with Runtime(settings, roles={"small", "large"}) as runtime:
        job = await solve(runtime, {**SPEC, "tools": ["add"]}, question=QUESTION)
        assert job.answer == "48"
        (call,) = tool_calls(job)
        assert (call["tool"], call["output"], call["journal"]) == ("add", "48", "miss")
        async with runtime.sessions() as session:
            journal = await repo.list_calls(session, job.job_id)
        turn = next(row.request for row in journal if row.role == "small")
        (offered,) = turn["tools"]
        assert offered["function"]["description"] == "Add two integers."
        assert offered["function"]["parameters"]["required"] == ["a", "b"]
        strict = await replay(runtime, job.job_id)
        assert strict.answer == "48"
        assert (strict.outcome.usage or {})["tool_executions"] == 0


@pytest.mark.parametrize(
    "broken",
    [
        '{"name": "python", "arguments": {"code": "print(12 + 3 * 12)"}',  # JSON cut short
        '```json\n{"name": "total_muffins", "arguments": {"morning": 12, "factor": 3}}\n```',
    ],
    ids=["broken-json", "function-not-offered"],
)
async def test_a_call_left_unreadable_in_the_text_is_retried_not_read_as_the_answer(
    rt: Runtime, simulator: Simulator, broken: str
) -> None:
    require_sandbox()
    # What the embedded 0.5B model did: a call in its text that the pool cannot read
    # back as a call. Its numbers must not become the answer; the model is told.
    simulator.set_config(
        script(
            Rule(match="tool: 48", replies=["The answer is 48."]),
            Rule(match=r"could not be read. Call one of the tools \(python\)", replies=[""],
                 tool_calls=[[python("print(12 + 3 * 12)")]]),
            Rule(match="muffins", replies=[broken]),
        )
    )  # fmt: skip
    job = await solve(rt, SPEC, question=QUESTION)
    assert job.answer == "48"
    assert job.events_named("step")[0] == {"step": 0, "tool_calls": [], "unreadable": True}
    assert job.events_named("answer")[0]["source"] == "reply"

    simulator.set_config(script(Rule(match="muffins", replies=[broken])))
    stuck = await solve(rt, {**SPEC, "max_steps": 2}, question=QUESTION)
    assert stuck.answer is None  # not 12, nor 3: nothing was computed
    assert stuck.events_named("answer") == [
        {"step": 1, "answer": None, "tool_calls": 0, "source": "last tool output"}
    ]
