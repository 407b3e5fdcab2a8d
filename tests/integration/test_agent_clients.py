"""Agent frameworks and LLM client libraries with Ponder as their model.

Each client is used as its users write it (default retries and all), pointed at a real
API server (in-process executor, SQLite) whose model is the scripted simulator. The
simulator's rules match the whole prompt text (one ``role: content`` line per message,
an assistant's calls as `` -> name(arguments)``, a tool's result as ``tool: ...``), so a
scripted reply or call comes back only if Ponder passed the conversation and the tools
through; JSON replies are fenced, so content that parses proves the format did too.
Dropping any of them falls through to the default reply and the assertions fail.

``tests/integration/test_conversations.py`` already covers the ``openai`` SDK's sync
forced tool call, its follow-up turn, ``parse`` and a two-turn conversation; this file
adds the async client and streaming, then langchain-openai, the OpenAI Agents SDK and
litellm. docs/agent-frameworks.md has the snippets.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from agents import (
    Agent,
    OpenAIChatCompletionsModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from openai import AsyncOpenAI, OpenAI
from pydantic import BaseModel, SecretStr

from app.api.executor import CeleryExecutor, InProcessExecutor, JobExecutor
from app.api.interactive import LaneExecutor
from app.api.main import create_app
from app.api.settings import ApiSettings
from core.simulator import Rule, ScriptedToolCall, Simulator, SimulatorConfig
from tests.fixtures.api import ApiServer
from tests.fixtures.runtime import simulator_settings

QUESTION = "How warm is it at the Eiffel Tower?"
FIND_CITY = ScriptedToolCall(name="find_city", arguments={"landmark": "Eiffel Tower"})
GET_TEMPERATURE = ScriptedToolCall(name="get_temperature", arguments={"city": "Paris"})
ASKED = "user: " + re.escape(QUESTION)
FINAL = "It is 18 C at the Eiffel Tower."


def script(*rules: Rule) -> SimulatorConfig:
    return SimulatorConfig(models=["sim-small", "sim-large"], rules=list(rules))


def two_rounds() -> SimulatorConfig:
    """find_city, then get_temperature on its result, then the answer from both: each
    rule needs every earlier turn, the first (most specific) wins."""
    return script(
        Rule(
            match=ASKED + r".*-> find_city.*tool: Paris.*-> get_temperature.*tool: 18 C$",
            replies=[FINAL],
        ),
        Rule(
            match=ASKED + r".*-> find_city.*tool: Paris$",
            replies=[""],
            tool_calls=[[GET_TEMPERATURE]],
        ),
        Rule(match=ASKED + "$", replies=[""], tool_calls=[[FIND_CITY]]),
    )


def function(name: str, argument: str) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": f"Look up by {argument}.",
            "parameters": {
                "type": "object",
                "properties": {argument: {"type": "string"}},
                "required": [argument],
            },
        },
    }


DISTANCE_JSON = '{"answer":5,"unit":"km"}'
"""The canonical JSON Ponder answers with a JSON format (the reply below, unfenced)."""
DISTANCE_REPLY = '```json\n{"unit": "km", "answer": 5}\n```'
"""Fenced, so that content which parses proves the format reached Ponder: without it the
fenced text would come back as it is."""


class Distance(BaseModel):
    answer: int
    unit: str


def _broker_down(job_id: str, **_: Any) -> None:
    raise ConnectionError("no broker in this test")


@pytest.fixture
def executor(request: pytest.FixtureRequest) -> JobExecutor:
    """The in-process executor; ``lane`` (parametrized indirectly) runs jobs in the API's
    interactive lane (the API's default), where ``direct`` streams its tokens."""
    if getattr(request, "param", "in_process") == "lane":
        return LaneExecutor(CeleryExecutor(enqueue=_broker_down), max_jobs=2)
    return InProcessExecutor()


@pytest.fixture
def base_url(
    simulator: Simulator, sqlite_database_url: str, tmp_path: Path, executor: JobExecutor
) -> Iterator[str]:
    """The OpenAI face's base URL (``.../v1``) of a real API server on the simulator."""
    settings = simulator_settings(simulator.url, sqlite_database_url, tmp_path)
    api = ApiSettings(_env_file=None, sse_poll_min_s=0.02, sse_poll_max_s=0.1)  # type: ignore[call-arg]
    app = create_app(settings, executor=executor, api_settings=api)
    with ApiServer(app) as server:
        yield f"{server.url}/v1"


def jobs(base_url: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = httpx.get(f"{base_url}/jobs").json()["items"]
    return items


# -- the openai SDK: async and streamed ------------------------------------------------------


async def test_openai_async_client_calls_a_tool_and_parses_structured_output(
    base_url: str, simulator: Simulator
) -> None:
    simulator.set_config(
        script(
            Rule(
                match=r"system: You are a travel guide\..*" + ASKED,
                replies=[""],
                tool_calls=[[FIND_CITY]],
            ),
            Rule(match="How far", replies=[DISTANCE_REPLY]),
        )
    )
    async with AsyncOpenAI(base_url=base_url, api_key="unused") as client:
        completion = await client.chat.completions.create(
            model="ponder/direct",
            messages=[
                {"role": "system", "content": "You are a travel guide."},
                {"role": "user", "content": QUESTION},
            ],
            tools=[function("find_city", "landmark")],  # type: ignore[list-item]
        )
        parsed = await client.chat.completions.parse(
            model="ponder/direct",
            messages=[{"role": "user", "content": "How far is the station?"}],
            response_format=Distance,
        )
    (choice,) = completion.choices
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "find_city"
    assert json.loads(call.function.arguments) == {"landmark": "Eiffel Tower"}
    assert parsed.choices[0].message.parsed == Distance(answer=5, unit="km")


@pytest.mark.parametrize("executor", ["in_process", "lane"], indirect=True)
def test_openai_stream_assembles_the_answer(
    base_url: str, simulator: Simulator, executor: JobExecutor
) -> None:
    answer = "Seventeen times three is 51. The answer is 51."
    simulator.set_config(
        script(Rule(match=r"user: My number is 17\..*user: Times 3\?", replies=[answer]))
    )
    with OpenAI(base_url=base_url, api_key="unused") as client:
        stream = client.chat.completions.create(
            model="ponder/direct",
            messages=[
                {"role": "user", "content": "My number is 17."},
                {"role": "assistant", "content": "Noted."},
                {"role": "user", "content": "Times 3?"},
            ],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices]
    assert "".join(p or "" for p in pieces) == answer
    if isinstance(executor, LaneExecutor):  # token by token, as the simulator made them
        assert [p for p in pieces if p][:3] == ["Seventeen", " times", " three"]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 11  # the reply's tokens


class FindCity(BaseModel):
    landmark: str


def test_openai_stream_helper_assembles_a_forced_tool_call(
    base_url: str, simulator: Simulator
) -> None:
    # The SDK's stream helper accumulates the tool-call deltas and parses the arguments
    # into the pydantic tool it was given.
    call = ScriptedToolCall(name="FindCity", arguments={"landmark": "Eiffel Tower"})
    simulator.set_config(script(Rule(match=ASKED, replies=[""], tool_calls=[[call]])))
    with (
        OpenAI(base_url=base_url, api_key="unused") as client,
        client.chat.completions.stream(
            model="ponder/direct",
            messages=[{"role": "user", "content": QUESTION}],
            tools=[openai.pydantic_function_tool(FindCity)],
            tool_choice={"type": "function", "function": {"name": "FindCity"}},
        ) as stream,
    ):
        events = [event.type for event in stream]
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.done" in events
    (choice,) = final.choices
    assert choice.finish_reason == "tool_calls"
    (parsed,) = choice.message.tool_calls or []
    assert parsed.function.parsed_arguments == FindCity(landmark="Eiffel Tower")


# -- langchain-openai ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["default", "json_schema", "json_mode", "function_calling"])
def test_langchain_with_structured_output(base_url: str, simulator: Simulator, method: str) -> None:
    if method == "function_calling":
        # A function named after the schema, forced by tool_choice.
        call = ScriptedToolCall(name="Distance", arguments={"answer": 5, "unit": "km"})
        simulator.set_config(script(Rule(match="How far", replies=[""], tool_calls=[[call]])))
    else:
        simulator.set_config(script(Rule(match="How far", replies=[DISTANCE_REPLY])))
    llm = ChatOpenAI(base_url=base_url, api_key=SecretStr("unused"), model="ponder/direct")
    options: dict[str, Any] = {} if method == "default" else {"method": method}
    structured = llm.with_structured_output(Distance, include_raw=True, **options)
    out = structured.invoke("How far is the station? Answer in JSON.")
    assert isinstance(out, dict) and out["parsing_error"] is None
    assert out["parsed"] == Distance(answer=5, unit="km")
    raw = out["raw"]
    assert isinstance(raw, AIMessage)
    if method == "function_calling":
        assert [(c["name"], c["args"]) for c in raw.tool_calls] == [
            ("Distance", {"answer": 5, "unit": "km"})
        ]
    else:
        assert raw.content == DISTANCE_JSON


def test_langchain_bind_tools_loop_of_two_rounds(base_url: str, simulator: Simulator) -> None:
    ran: list[tuple[str, dict[str, Any]]] = []

    @tool
    def find_city(landmark: str) -> str:
        """The city a landmark is in."""
        ran.append(("find_city", {"landmark": landmark}))
        return "Paris"

    @tool
    def get_temperature(city: str) -> str:
        """The temperature in a city now."""
        ran.append(("get_temperature", {"city": city}))
        return "18 C"

    simulator.set_config(two_rounds())
    tools = {t.name: t for t in (find_city, get_temperature)}
    llm = ChatOpenAI(base_url=base_url, api_key=SecretStr("unused"), model="ponder/direct")
    model = llm.bind_tools(list(tools.values()))
    messages: list[BaseMessage] = [HumanMessage(QUESTION)]
    for _ in range(4):  # the script needs three model turns; a fourth would be a loop
        reply = model.invoke(messages)
        messages.append(reply)
        if not reply.tool_calls:
            break
        for call in reply.tool_calls:
            messages.append(tools[call["name"]].invoke(call))  # a ToolMessage
    assert ran == [
        ("find_city", {"landmark": "Eiffel Tower"}),
        ("get_temperature", {"city": "Paris"}),
    ]
    assert [type(m).__name__ for m in messages] == [
        "HumanMessage", "AIMessage", "ToolMessage", "AIMessage", "ToolMessage", "AIMessage",
    ]  # fmt: skip
    assert isinstance(messages[2], ToolMessage) and messages[2].content == "Paris"
    assert messages[-1].content == FINAL
    assert len(jobs(base_url)) == 3  # one job per model turn


# -- the OpenAI Agents SDK -------------------------------------------------------------------


async def test_openai_agents_run_a_function_tool_to_completion(
    base_url: str, simulator: Simulator
) -> None:
    set_tracing_disabled(True)  # traces are exported to OpenAI's platform otherwise
    ran: list[str] = []

    @function_tool
    def get_temperature(city: str) -> str:
        """The temperature in a city now."""
        ran.append(city)
        return "18 C"

    asked = r"system: You answer weather questions\..*user: How warm is Paris\?"
    simulator.set_config(
        script(
            Rule(
                match=asked + r".*-> get_temperature.*tool: 18 C", replies=["It is 18 C in Paris."]
            ),
            Rule(match=asked, replies=[""], tool_calls=[[GET_TEMPERATURE]]),
        )
    )
    async with AsyncOpenAI(base_url=base_url, api_key="unused") as client:
        agent = Agent(
            name="weather",
            instructions="You answer weather questions.",
            model=OpenAIChatCompletionsModel(model="ponder/direct", openai_client=client),
            tools=[get_temperature],
        )
        result = await Runner.run(agent, "How warm is Paris?")
    assert ran == ["Paris"]
    assert result.final_output == "It is 18 C in Paris."
    assert len(jobs(base_url)) == 2


# -- litellm ---------------------------------------------------------------------------------


def test_litellm_completion_plain_and_with_tools(
    base_url: str, simulator: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Imported here, after this is set: otherwise litellm fetches its model price list
    # over the network on import.
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    said = "6 times 7 is 43 in this script. The answer is 43."
    simulator.set_config(
        script(
            Rule(match=r"system: Be brief\..*user: What is 6 times 7\?", replies=[said]),
            Rule(match=ASKED, replies=[""], tool_calls=[[FIND_CITY]]),
        )
    )
    plain = litellm.completion(
        model="openai/ponder/direct",
        api_base=base_url,
        api_key="unused",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 6 times 7?"},
        ],
    )
    assert plain.choices[0].message.content == said

    called = litellm.completion(
        model="openai/ponder/direct",
        api_base=base_url,
        api_key="unused",
        messages=[{"role": "user", "content": QUESTION}],
        tools=[function("find_city", "landmark")],
        tool_choice="required",
    )
    choice = called.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "find_city"
    assert json.loads(call.function.arguments) == {"landmark": "Eiffel Tower"}
