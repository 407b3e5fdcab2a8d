"""A job's input as a conversation, and answers of every kind, through the v1 API.

A real uvicorn server with the in-process executor, SQLite and PostgreSQL, and the
scripted simulator as the model: its rules match the whole prompt text (one
``role: content`` line per message), so a reply proves which messages reached it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI
from pydantic import BaseModel

from app.api.executor import InProcessExecutor
from app.api.main import create_app
from app.api.settings import ApiSettings
from core.simulator import Rule, ScriptedToolCall, Simulator, SimulatorConfig
from tests.fixtures.api import ApiServer
from tests.fixtures.runtime import simulator_settings

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "request_id": {"type": "string"}},
            "required": ["city"],
        },
    },
}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
DISTANCE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "integer"}, "unit": {"type": "string"}},
    "required": ["answer", "unit"],
    "additionalProperties": False,
}


def script(*rules: Rule) -> SimulatorConfig:
    return SimulatorConfig(models=["sim-small", "sim-large"], rules=list(rules))


@pytest.fixture
def client(simulator: Simulator, database_url: str, tmp_path: Path) -> Iterator[httpx.Client]:
    settings = simulator_settings(simulator.url, database_url, tmp_path)
    api = ApiSettings(_env_file=None, sse_poll_min_s=0.02, sse_poll_max_s=0.1)  # type: ignore[call-arg]
    app = create_app(settings, executor=InProcessExecutor(), api_settings=api)
    with ApiServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def run(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/jobs", json={"seed": 7, **body})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    deadline = time.monotonic() + 20
    while True:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, f"job still {job['status']}"
        time.sleep(0.02)


def decisions(client: httpx.Client, job_id: str, name: str) -> list[dict[str, Any]]:
    events = client.get(f"/v1/jobs/{job_id}/trace").json()["events"]
    return [e["attributes"] for e in events if e["type"] == "decision" and e["name"] == name]


def replay_strictly(client: httpx.Client, simulator: Simulator, job: dict[str, Any]) -> None:
    """Strict replay: the same result with zero model calls; the diff finds no change."""
    before = simulator.stats.requests
    child = client.post(f"/v1/jobs/{job['id']}/replay", json={"mode": "strict"})
    assert child.status_code == 202, child.text
    child_id = child.json()["id"]
    deadline = time.monotonic() + 20
    while (done := client.get(f"/v1/jobs/{child_id}").json())["status"] not in (
        "succeeded",
        "failed",
    ):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert simulator.stats.requests == before
    assert done["status"] == "succeeded" and done["result"] == job["result"]
    assert done["conversation"] == job["conversation"]
    diff = client.get(f"/v1/jobs/{job['id']}/diff/{child_id}").json()
    assert diff["identical"] is True and diff["first_divergence"] is None


def test_a_two_turn_conversation_is_answered_from_both_turns(
    client: httpx.Client, simulator: Simulator
) -> None:
    # The reply needs the caller's system prompt, the strategy's instruction after it,
    # and the first turn: dropping any of them falls through to the default reply (42).
    simulator.set_config(
        script(
            Rule(
                match=r"system: Speak like a pirate\.\n\nYou are a careful problem solver.*"
                r"user: My number is 17\..*assistant: Noted\..*user: What is my number times 3\?",
                replies=["Arr, 17 times 3 be 51. The answer is 51."],
            )
        )
    )
    messages = [
        {"role": "system", "content": "Speak like a pirate."},
        {"role": "user", "content": "My number is 17."},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": [{"type": "text", "text": "What is my number times 3?"}]},
    ]
    for kind in ("direct", "self_consistency"):
        job = run(client, messages=messages, strategy={"kind": kind, "n": 3} if kind != "direct"
                  else {"kind": kind})  # fmt: skip
        assert job["status"] == "succeeded", job["error"]
        assert job["result"]["answer"] == "51"
        assert job["question"] == "What is my number times 3?"
        assert job["conversation"]["messages"][3] == {
            "role": "user",
            "content": "What is my number times 3?",
        }
        assert job["conversation"]["answer_kind"] == "number"


def test_self_consistency_votes_tool_calls_hierarchically_and_replays(
    client: httpx.Client, simulator: Simulator
) -> None:
    paris = ScriptedToolCall(name="get_weather", arguments={"city": "Paris"})
    london = ScriptedToolCall(name="get_weather", arguments={"city": "London"})
    simulator.set_config(
        script(
            Rule(
                match="weather in Paris",
                replies=["", "", "", "It is sunny.", ""],
                tool_calls=[[paris], [london], [paris], [], [paris]],
            )
        )
    )
    job = run(
        client,
        messages=ASK_WEATHER,
        tools=[WEATHER],
        strategy={"kind": "self_consistency", "n": 5},
    )
    assert job["status"] == "succeeded", job["error"]
    assert job["conversation"]["answer_kind"] == "tool_calls"
    (call,) = job["result"]["tool_calls"]
    assert (call["name"], json.loads(call["arguments"])) == ("get_weather", {"city": "Paris"})
    (vote,) = decisions(client, job["id"], "tool_call_vote")
    levels = {level["name"]: level for level in vote["levels"]}
    # Four samples call a tool, one answers in words: the tool wins the first level.
    assert levels["call_or_answer"]["counts"] == {"call": 4, "answer": 1}
    assert levels["arguments"]["chosen"] == 'get_weather({"city":"Paris"})'
    replay_strictly(client, simulator, job)


def test_self_consistency_votes_schema_valid_json_in_canonical_form_and_replays(
    client: httpx.Client, simulator: Simulator
) -> None:
    simulator.set_config(
        script(
            Rule(
                match="How far",
                replies=[
                    '{"answer": 5, "unit": "km"}',
                    '```json\n{"answer": 6, "unit": "km"}\n```',
                    '{"unit":"km","answer":5}',
                    '{"answer": "6", "unit": "km"}',  # a string: fails the schema
                    "About six kilometres.",  # not JSON
                ],
            )
        )
    )
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "distance", "schema": DISTANCE_SCHEMA},
    }
    job = run(
        client,
        question="How far is the station?",
        response_format=response_format,
        strategy={"kind": "self_consistency", "n": 5},
    )
    assert job["status"] == "succeeded", job["error"]
    result = job["result"]
    assert result["answer"] == '{"answer":5,"unit":"km"}'
    assert result["votes"] == {'{"answer":5,"unit":"km"}': 2, '{"answer":6,"unit":"km"}': 1}
    samples = decisions(client, job["id"], "sample")
    assert [s.get("problem") for s in samples][3:] == [
        "answer: '6' is not of type 'integer'",
        "not JSON: Expecting value: line 1 column 1 (char 0)",
    ]
    replay_strictly(client, simulator, job)


def test_free_text_answers_are_chosen_by_universal_self_consistency(
    client: httpx.Client, simulator: Simulator
) -> None:
    simulator.set_config(
        script(
            Rule(match="most consistent", replies=["The most consistent response is Response 1."]),
            Rule(
                match="Name a colour",
                replies=["Blue, like the sky.", "Blue.", "Red, like a rose."],
            ),
        )
    )
    job = run(
        client,
        question="Name a colour of the French flag.",
        answer_kind="text",
        strategy={"kind": "self_consistency", "n": 3},
    )
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["answer"] == "Blue."
    (choice,) = decisions(client, job["id"], "usc_choice")
    assert choice["index"] == 1 and choice["named"] == 1
    assert "Response 1" in choice["said"]


def test_direct_returns_a_forced_tool_call(client: httpx.Client, simulator: Simulator) -> None:
    paris = ScriptedToolCall(name="get_weather", arguments={"city": "Paris"})
    simulator.set_config(script(Rule(match="weather", replies=[""], tool_calls=[[paris]])))
    choice = {"type": "function", "function": {"name": "get_weather"}}
    job = run(
        client,
        messages=ASK_WEATHER,
        tools=[WEATHER],
        tool_choice=choice,
        strategy={"kind": "direct"},
    )
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["answer"] == 'get_weather({"city":"Paris"})'
    assert job["result"]["tool_calls"][0]["name"] == "get_weather"
    assert job["conversation"]["tool_choice"] == choice


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"question": "2+2?", "messages": ASK_WEATHER}, "messages", "not both"),
        ({}, "question", "non-empty"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content[0].type",
            "only text parts",
        ),
        (
            {"messages": [*ASK_WEATHER, {"role": "tool", "tool_call_id": "x", "content": "1"}]},
            "messages[1].tool_call_id",
            "answers no earlier",
        ),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role", "Input"),
        (
            {"messages": [*ASK_WEATHER, {"role": "assistant", "content": "ok"}]},
            "messages[1].role",
            "end with a user",
        ),
        (
            {
                "messages": ASK_WEATHER,
                "tools": [WEATHER],
                "tool_choice": {"type": "function", "function": {"name": "nope"}},
            },
            "tool_choice.function.name",
            "do not offer",
        ),
        ({"messages": ASK_WEATHER, "tool_choice": "required"}, "tool_choice", "needs tools"),
        (
            {
                "question": "x?",
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "n", "schema": {"type": "nonsense"}},
                },
            },
            "response_format.json_schema.schema",
            "not a valid JSON schema",
        ),
        ({"question": "x?", "answer_kind": "json"}, "answer_kind", "needs response_format"),
        (
            {"messages": ASK_WEATHER, "tools": [WEATHER], "strategy": {"kind": "beam_search"}},
            "answer_kind",
            "does not support answer kind 'tool_calls'",
        ),
    ],
)
def test_bad_conversations_are_422_naming_the_field(
    client: httpx.Client, body: dict[str, Any], field: str, words: str
) -> None:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field, error
    assert words in error["message"], error


# -- through the OpenAI face, with the openai SDK ----------------------------------------


class Distance(BaseModel):
    answer: int
    unit: str


def sdk(client: httpx.Client) -> OpenAI:
    base_url = str(client.base_url).rstrip("/") + "/v1"
    return OpenAI(base_url=base_url, api_key="unused", max_retries=0)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_openai_sdk_gets_forced_tool_calls_with_arguments_that_parse(
    client: httpx.Client, simulator: Simulator
) -> None:
    paris = ScriptedToolCall(name="get_weather", arguments={"city": "Paris"})
    simulator.set_config(script(Rule(match="weather", replies=[""], tool_calls=[[paris]])))
    completion = sdk(client).chat.completions.create(  # type: ignore[call-overload]
        model="ponder/direct",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    (choice,) = completion.choices
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    # The tool's result goes back as the next turn; the model answers from it.
    simulator.set_config(
        script(Rule(match=r"tool: 18 degrees", replies=["It is 18 degrees in Paris."]))
    )
    follow_up = sdk(client).chat.completions.create(
        model="ponder/direct",
        messages=[
            {"role": "user", "content": "What is the weather in Paris?"},
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "18 degrees, sunny"},
        ],
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert follow_up.choices[0].finish_reason == "stop"
    assert follow_up.choices[0].message.content == "It is 18 degrees in Paris."


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_openai_sdk_structured_output_parses_into_the_callers_model(
    client: httpx.Client, simulator: Simulator
) -> None:
    simulator.set_config(
        script(Rule(match="How far", replies=['```json\n{"unit": "km", "answer": 5}\n```']))
    )
    completion = sdk(client).chat.completions.parse(
        model="ponder/self_consistency",
        messages=[{"role": "user", "content": "How far is the station?"}],
        response_format=Distance,
        extra_body={"ponder": {"strategy": {"n": 3}}},
    )
    assert completion.choices[0].message.parsed == Distance(answer=5, unit="km")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_openai_sdk_two_turns_are_one_conversation(
    client: httpx.Client, simulator: Simulator
) -> None:
    simulator.set_config(
        script(
            Rule(
                match=r"user: My number is 17\..*user: What is my number times 3\?",
                replies=["17 times 3 is 51. The answer is 51."],
            )
        )
    )
    completion = sdk(client).chat.completions.create(
        model="ponder/direct",
        messages=[
            {"role": "user", "content": "My number is 17."},
            {"role": "assistant", "content": "Got it."},
            {"role": "user", "content": "What is my number times 3?"},
        ],
    )
    assert completion.choices[0].message.content == "17 times 3 is 51. The answer is 51."
    assert completion.model_extra and completion.model_extra["ponder"]["answer"] == "51"
