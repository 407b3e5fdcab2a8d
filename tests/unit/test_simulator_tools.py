"""The simulator answers with function calls where its script says so, as vLLM and
llama.cpp do for a request that offers ``tools``: checked through the ``openai`` SDK,
whose parser is what every client of Ponder's OpenAI face will meet."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionFunctionToolParam

from core.simulator import Rule, ScriptedToolCall, Simulator, SimulatorConfig

WEATHER: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
PARIS = {"city": "Paris"}


def script() -> SimulatorConfig:
    return SimulatorConfig(
        rules=[
            # After the tool answered, the model answers in words.
            Rule(match=r"tool: 17", replies=["It is 17 degrees in Paris."]),
            Rule(
                match="weather",
                replies=["", "Let me check."],
                pick="first",
                tool_calls=[[ScriptedToolCall(name="get_weather", arguments=PARIS)], []],
            ),
        ]
    )


@pytest.fixture
def client(simulator: Simulator) -> Iterator[OpenAI]:
    simulator.set_config(script())
    with OpenAI(base_url=f"{simulator.url}/v1", api_key="none", max_retries=0) as c:
        yield c


def ask(client: OpenAI, **extra: Any) -> Any:
    return client.chat.completions.create(
        model="sim",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        **extra,
    )


def test_a_request_offering_tools_gets_the_scripted_call(client: OpenAI) -> None:
    reply = ask(client, tools=[WEATHER])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert call.id
    # The call's name and arguments are generated tokens, and are counted.
    assert reply.usage is not None and reply.usage.completion_tokens > 0


def test_without_tools_or_with_tool_choice_none_the_reply_is_text(client: OpenAI) -> None:
    for extra in ({}, {"tools": [WEATHER], "tool_choice": "none"}):
        choice = ask(client, **extra).choices[0]
        assert choice.finish_reason == "stop"
        assert choice.message.tool_calls is None and choice.message.content == ""


def test_the_tool_result_turn_matches_its_own_rule(client: OpenAI) -> None:
    first = ask(client, tools=[WEATHER]).choices[0].message
    assert first.tool_calls is not None
    call = first.tool_calls[0]
    reply = client.chat.completions.create(
        model="sim",
        tools=[WEATHER],
        messages=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": call.function.arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call.id, "content": "17 C, sunny"},
        ],
    )
    assert reply.choices[0].message.content == "It is 17 degrees in Paris."
    assert reply.choices[0].finish_reason == "stop"


def test_a_streamed_call_arrives_in_one_delta_then_finishes(client: OpenAI) -> None:
    chunks = list(ask(client, tools=[WEATHER], stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls = [d.tool_calls for d in deltas if d.tool_calls]
    assert len(calls) == 1
    (call,) = calls[0]
    assert call.index == 0 and call.function is not None
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments or "") == {"city": "Paris"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_bad_tools_are_a_400_naming_the_field(simulator: Simulator) -> None:
    simulator.set_config(script())
    for body, field in (
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice"),
    ):
        r = httpx.post(
            f"{simulator.url}/v1/chat/completions",
            json={"model": "sim", "messages": [{"role": "user", "content": "hi"}], **body},
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == field


def test_a_script_needs_one_list_of_calls_per_reply() -> None:
    with pytest.raises(ValueError, match="one entry"):
        Rule(replies=["a", "b"], tool_calls=[[]])
