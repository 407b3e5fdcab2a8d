"""Function calls through the model-call path: sent with the request, parsed from the
answer (or from its text, where a server leaves them there), journaled, and replayed.

Against the scripted simulator over real HTTP: native ``tool_calls`` as vLLM returns
them, and the call written as a fenced JSON block, as the embedded llama.cpp model
answered on 2026-12-05.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict

from core.jobs import create_replay, submit_job
from core.pools import PoolClient
from core.pools.tool_text import calls_in_text
from core.runtime import Runtime
from core.settings import PoolSettings
from core.simulator import Rule, ScriptedToolCall, Simulator, SimulatorConfig
from strategies.protocol import Context, ModelRequest, StrategyResult, role_field
from strategies.registry import STRATEGIES, Strategy

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
FENCED = '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```'


@pytest.fixture
async def pool(simulator: Simulator) -> AsyncIterator[PoolClient]:
    settings = PoolSettings(endpoints=[simulator.url], model="sim", kind="simulator")
    client = PoolClient("small", settings)
    try:
        yield client
    finally:
        await client.aclose()


def scripted(reply: str, calls: list[ScriptedToolCall]) -> SimulatorConfig:
    return SimulatorConfig(rules=[Rule(match="weather", replies=[reply], tool_calls=[calls])])


async def test_native_tool_calls_come_back_as_calls(simulator: Simulator, pool: PoolClient) -> None:
    paris = ScriptedToolCall(name="get_weather", arguments={"city": "Paris"})
    simulator.set_config(scripted("", [paris]))
    result = await pool.generate(ModelRequest(messages=ASK, tools=[WEATHER], max_tokens=32))
    (choice,) = result.choices
    assert choice.finish_reason == "tool_calls" and choice.text == ""
    (call,) = choice.tool_calls or []
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert call.id  # the server's id, kept for the tool result's tool_call_id


async def test_a_call_left_in_the_text_is_read_back_as_a_call(
    simulator: Simulator, pool: PoolClient
) -> None:
    simulator.set_config(scripted(FENCED, []))
    result = await pool.generate(ModelRequest(messages=ASK, tools=[WEATHER], max_tokens=64))
    (choice,) = result.choices
    assert choice.finish_reason == "tool_calls" and choice.text == ""
    (call,) = choice.tool_calls or []
    assert (call.id, call.name) == ("call_0_0", "get_weather")
    assert json.loads(call.arguments) == {"city": "Paris"}

    # The same text without tools offered, or with tool_choice "none", stays text.
    for request in (
        ModelRequest(messages=ASK, max_tokens=64),
        ModelRequest(messages=ASK, max_tokens=64, tools=[WEATHER], tool_choice="none"),
    ):
        plain = await pool.generate(request)
        assert plain.choices[0].tool_calls is None and plain.choices[0].text == FENCED


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"name": "get_weather", "arguments": {"city": "Paris"}}', (["get_weather"], "")),
        (
            'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}'
            "\n</tool_call>",
            (["get_weather"], "Let me look."),
        ),
        (
            '[{"name": "get_weather", "parameters": {}}, {"name": "get_weather"}]',
            (["get_weather"] * 2, ""),
        ),
        (  # parallel calls, one object per line
            '{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
            '{"name": "get_weather", "arguments": {"city": "Rome"}}',
            (["get_weather"] * 2, ""),
        ),
        (  # the same in one fence, and each in its own
            '```json\n{"name": "get_weather", "arguments": {}}\n{"name": "get_weather"}\n```',
            (["get_weather"] * 2, ""),
        ),
        (
            '```json\n{"name": "get_weather"}\n```\n```json\n{"name": "get_weather"}\n```',
            (["get_weather"] * 2, ""),
        ),
        ('{"name": "get_weather"}\nThen I will answer.', None),  # not only calls
        ('{"name": "get_weather"}\n{"name": "delete_files"}', None),  # one not offered
        ('{"name": "delete_files", "arguments": {}}', None),  # not offered
        ('The answer is {"name": "get_weather"}', None),  # not only calls
        ('{"name": "get_weather", "arguments": 3}', None),
    ],
)
def test_only_a_text_that_is_calls_to_offered_functions_is_read_as_calls(
    text: str, expected: tuple[list[str], str] | None
) -> None:
    found = calls_in_text(text, {"get_weather"})
    if expected is None:
        assert found is None
        return
    assert found is not None
    calls, rest = found
    assert ([c.name for c in calls], rest) == expected
    assert all(isinstance(json.loads(c.arguments), dict) for c in calls)


class ToolProbeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["tool_probe"] = "tool_probe"
    role: str = role_field(default="small", description="The role called.")


async def tool_probe(problem: str, ctx: Context, params: ToolProbeParams) -> StrategyResult:
    request = ModelRequest(
        messages=[{"role": "user", "content": problem}], tools=[WEATHER], max_tokens=32
    )
    generation = await ctx.models[params.role].generate(request)
    calls = [c.model_dump() for c in generation.choices[0].tool_calls or []]
    ctx.trace("calls", calls=calls)
    return StrategyResult(answer=json.dumps(calls), details={"calls": calls})


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        STRATEGIES, "tool_probe", Strategy("tool_probe", ToolProbeParams, tool_probe, "test probe")
    )


async def test_calls_are_journaled_and_a_strict_replay_returns_them_without_a_call(
    runtime: Runtime, simulator: Simulator, probe: None
) -> None:
    paris = ScriptedToolCall(name="get_weather", arguments={"city": "Paris"})
    simulator.set_config(scripted("", [paris]))
    job_id = await submit_job(
        runtime.sessions, runtime.pools, question=ASK[0]["content"], strategy={"kind": "tool_probe"}
    )
    live = await runtime.runner.run(job_id)
    assert live.status == "succeeded", live.error
    assert live.result is not None
    calls: list[dict[str, Any]] = live.result["details"]["calls"]
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
        ("get_weather", {"city": "Paris"})
    ]

    before = simulator.stats.requests
    child_id = await create_replay(runtime.sessions, runtime.pools, job_id, mode="strict")
    replayed = await runtime.runner.run(child_id)
    assert replayed.status == "succeeded", replayed.error
    assert simulator.stats.requests == before
    assert replayed.result is not None and replayed.result["details"]["calls"] == calls
