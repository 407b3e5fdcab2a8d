"""Reasoning tokens counted apart from answer tokens, from the server to every reader.

The simulator plays a reasoning model (vLLM's reasoning parser, llama.cpp): chat replies
carry ``reasoning_content`` and ``usage.completion_tokens_details.reasoning_tokens``, or
the text alone (a client must estimate). Counted per call (journal, model_call span and
event), per role and per job, through the REST API and the OpenAI face; a strict replay
gives a strategy the same reasoning text and reports the same counts without a call.

Token counts by the simulator's documented tokenizer (a word or a punctuation mark with
its leading space): THOUGHT is 7 tokens, ANSWER 5.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from pydantic import BaseModel, ConfigDict

from app.api.executor import CeleryExecutor
from app.api.interactive import LaneExecutor
from app.api.main import create_app
from app.api.settings import ApiSettings
from core.db import repo
from core.events import ModelCallEvent, event_from_span
from core.jobs import create_replay, submit_job
from core.pools import wire
from core.runtime import Runtime
from core.simulator.config import Rule, SimulatorConfig
from core.simulator.server import Simulator
from strategies.protocol import Context, ModelRequest, StrategyResult, role_field
from strategies.registry import STRATEGIES, Strategy
from tests.fixtures.api import ApiServer
from tests.fixtures.runtime import simulator_settings

THOUGHT = "Let me add 2 and 3."  # 7 tokens
ANSWER = "The answer is 5."  # 5 tokens


def script(reasoning_usage: bool = True) -> SimulatorConfig:
    return SimulatorConfig(
        models=["sim-small", "sim-large"],
        rules=[Rule(replies=[ANSWER], reasoning=THOUGHT, reasoning_usage=reasoning_usage)],
    )


class ProbeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["reasoning_probe"] = "reasoning_probe"
    sampler: str = role_field(default="small", description="Two samples, one call.")
    streamer: str = role_field(default="large", description="One streamed call.")


async def probe(problem: str, ctx: Context, params: ProbeParams) -> StrategyResult:
    messages = [{"role": "user", "content": problem}]
    plain = await ctx.models[params.sampler].generate(
        ModelRequest(messages=messages, n=2, max_tokens=64, seed=1)
    )
    request = ModelRequest(messages=messages, max_tokens=64, seed=2)
    async with ctx.models[params.streamer].stream(request) as stream:
        pieces = [piece async for piece in stream]
    assert stream.result is not None
    streamed = stream.result.choices[0]
    return StrategyResult(
        answer="5",
        text="".join(pieces),
        details={
            "reasoning": [c.reasoning for c in plain.choices] + [streamed.reasoning],
            "texts": [c.text for c in plain.choices] + [streamed.text],
            "usage": [plain.usage.model_dump(), stream.result.usage.model_dump()],
        },
    )


@pytest.fixture
def reasoning_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        STRATEGIES, "reasoning_probe", Strategy("reasoning_probe", ProbeParams, probe, "test")
    )


async def model_calls(rt: Runtime, job_id: str) -> dict[str, ModelCallEvent]:
    async with rt.sessions() as session:
        spans = await repo.list_spans(session, job_id)
    events = [event_from_span(s) for s in spans if s.kind == "model_call"]
    return {e.name: e for e in events if isinstance(e, ModelCallEvent)}


async def test_reasoning_is_counted_per_call_role_and_job_and_replayed(
    runtime: Runtime, simulator: Simulator, reasoning_probe: None
) -> None:
    simulator.set_config(script())
    job_id = await submit_job(
        runtime.sessions, runtime.pools, question="2+3?", strategy={"kind": "reasoning_probe"}
    )
    outcome = await runtime.runner.run(job_id)
    assert outcome.status == "succeeded", outcome.error
    result, usage = outcome.result, outcome.usage
    assert result is not None and usage is not None

    # The strategy gets the answer as text and the reasoning apart, streamed or not.
    assert result["details"]["texts"] == [ANSWER] * 3
    assert result["details"]["reasoning"] == [THOUGHT] * 3
    assert result["text"] == ANSWER  # streamed deltas are the answer's only
    plain, streamed = result["details"]["usage"]
    assert (plain["completion_tokens"], plain["reasoning_tokens"]) == (24, 14)
    assert (streamed["completion_tokens"], streamed["reasoning_tokens"]) == (12, 7)
    assert not plain["reasoning_tokens_estimated"] and not streamed["reasoning_tokens_estimated"]

    # Per job and per role: a part of completion_tokens, not added to it.
    assert (usage["completion_tokens"], usage["reasoning_tokens"]) == (36, 21)
    assert {
        r: (u["completion_tokens"], u["reasoning_tokens"]) for r, u in usage["by_role"].items()
    } == {
        "small": (24, 14),
        "large": (12, 7),
    }
    assert "reasoning_tokens_estimated" not in usage

    # Per call: the model_call span (and its event) and the journal.
    calls = await model_calls(runtime, job_id)
    assert {n: (e.completion_tokens, e.reasoning_tokens) for n, e in calls.items()} == {
        "small.generate": (24, 14),
        "large.stream": (12, 7),
    }
    async with runtime.sessions() as session:
        entries = sorted(await repo.list_calls(session, job_id), key=lambda e: e.role)
    assert [e.response["reasoning_tokens"] for e in entries] == [7, 14]  # large, small
    assert [c.get("reasoning") for e in entries for c in e.response["choices"]] == [THOUGHT] * 3

    # A strict replay: no model call, the same reasoning text and counts.
    before = simulator.stats.requests
    child_id = await create_replay(runtime.sessions, runtime.pools, job_id, mode="strict")
    child = await runtime.runner.run(child_id)
    assert child.status == "succeeded", child.error
    assert simulator.stats.requests == before
    assert child.result is not None and child.usage is not None
    assert child.result["details"] == result["details"]
    for field in ("completion_tokens", "reasoning_tokens", "by_role"):
        assert child.usage[field] == usage[field], field
    replayed = await model_calls(runtime, child_id)
    assert {n: e.reasoning_tokens for n, e in replayed.items()} == {
        "small.generate": 14,
        "large.stream": 7,
    }
    assert {e.journal for e in replayed.values()} == {"hit"}


async def test_reasoning_text_without_a_count_is_estimated_and_flagged(
    runtime: Runtime, simulator: Simulator, reasoning_probe: None
) -> None:
    # llama.cpp sends reasoning_content but no completion_tokens_details: the client
    # estimates at 4 characters per token (19 characters -> 5) and says so.
    simulator.set_config(script(reasoning_usage=False))
    job_id = await submit_job(
        runtime.sessions, runtime.pools, question="2+3?", strategy={"kind": "reasoning_probe"}
    )
    outcome = await runtime.runner.run(job_id)
    assert outcome.status == "succeeded", outcome.error
    usage = outcome.usage
    assert usage is not None
    assert usage["completion_tokens"] == 36  # the server's count, unchanged
    assert usage["reasoning_tokens"] == 2 * 5 + 5
    assert usage["reasoning_tokens_estimated"] is True
    assert usage["by_role"]["large"]["reasoning_tokens"] == 5
    calls = await model_calls(runtime, job_id)
    assert {n: (e.reasoning_tokens, e.reasoning_tokens_estimated) for n, e in calls.items()} == {
        "small.generate": (10, True),
        "large.stream": (5, True),
    }


def _broker_down(job_id: str, **_: Any) -> None:
    raise ConnectionError("no broker in this test")


@pytest.fixture
def api(simulator: Simulator, database_url: str, tmp_path: Path) -> Iterator[str]:
    """The API with the interactive lane (jobs run in its process), pools without prices."""
    settings = simulator_settings(simulator.url, database_url, tmp_path)
    api_settings = ApiSettings(_env_file=None, sse_poll_min_s=0.02)  # type: ignore[call-arg]
    executor = LaneExecutor(CeleryExecutor(enqueue=_broker_down), max_jobs=4)
    app = create_app(settings, executor=executor, api_settings=api_settings)
    with ApiServer(app) as server:
        yield server.url


def test_openai_face_and_job_api_report_reasoning_and_unknown_cost(
    api: str, simulator: Simulator
) -> None:
    simulator.set_config(script())
    body = {"model": "ponder/direct", "messages": [{"role": "user", "content": "What is 2 + 3?"}]}
    response = httpx.post(f"{api}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 200, response.text
    completion = response.json()
    # direct: one call, 7 reasoning + 5 answer tokens; the answer is the content alone.
    assert completion["usage"]["completion_tokens"] == 12
    assert completion["usage"]["completion_tokens_details"] == {"reasoning_tokens": 7}
    assert completion["usage"]["total_tokens"] == (
        completion["usage"]["prompt_tokens"] + completion["usage"]["completion_tokens"]
    )
    assert ANSWER in (completion["choices"][0]["message"]["content"] or "")
    assert THOUGHT not in (completion["choices"][0]["message"]["content"] or "")
    # The simulator's pools have no prices: the cost is unknown, not 0.
    extension = completion["ponder"]
    assert (extension["cost"], extension["cost_known"]) == (None, False)

    job = httpx.get(f"{api}/v1/jobs/{extension['job_id']}", timeout=10).json()
    usage = job["usage"]
    assert (usage["completion_tokens"], usage["reasoning_tokens"]) == (12, 7)
    assert usage["by_role"]["small"]["reasoning_tokens"] == 7
    assert (usage["cost"], usage["cost_known"]) == (None, False)
    assert (usage["by_role"]["small"]["cost"], usage["by_role"]["small"]["cost_known"]) == (
        None,
        False,
    )
    trace = httpx.get(f"{api}/v1/jobs/{job['id']}/trace", timeout=10).json()
    calls = [e for e in trace["events"] if e["type"] == "model_call"]
    assert [(c["reasoning_tokens"], c["cost_known"]) for c in calls] == [(7, False)]


def test_a_cost_limit_on_a_pool_without_prices_is_refused_at_submit(api: str) -> None:
    body = {"question": "What is 2 + 3?", "budget": {"max_cost": 0.5}}
    response = httpx.post(f"{api}/v1/jobs", json=body, timeout=10)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == "budget.max_cost"
    assert "pool 'small' has none" in error["message"]
    assert httpx.get(f"{api}/v1/jobs", timeout=10).json()["items"] == []


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_wire_reads_both_reasoning_fields_and_clamps_an_estimate(field: str) -> None:
    # vLLM before 0.10, llama.cpp and DeepSeek say reasoning_content; vLLM since, reasoning.
    body: dict[str, Any] = {
        "choices": [{"index": 0, "message": {"content": ANSWER, field: "x" * 400}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 20},
    }
    _, [choice], usage = wire.parse_response(body, chat=True)
    assert (choice.text, choice.reasoning) == (ANSWER, "x" * 400)
    # 100 estimated, but reasoning is a part of the 20 tokens the server generated.
    assert (usage.reasoning_tokens, usage.reasoning_tokens_estimated) == (20, True)
    body["usage"] = {**body["usage"], "completion_tokens_details": {"reasoning_tokens": 15}}
    _, _, counted = wire.parse_response(body, chat=True)
    assert (counted.reasoning_tokens, counted.reasoning_tokens_estimated) == (15, False)
