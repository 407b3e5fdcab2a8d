"""Streamed model calls through the job context: deltas, early stop, cancellation,
journal and strict replay — against the simulator's real SSE streaming."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict

from core.db import repo
from core.jobs import create_replay, submit_job
from core.pools.client import PoolClient
from core.runtime import Runtime
from core.settings import PoolSettings
from core.simulator.config import Failure, Latency, Rule, SimulatorConfig
from core.simulator.server import Simulator
from strategies.protocol import CANCELLED, Context, ModelRequest, StrategyResult, role_field
from strategies.registry import STRATEGIES, Strategy

REPLY = "one two three four five six seven eight. The answer is 5."


class ProbeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["stream_probe"] = "stream_probe"
    role: str = role_field(default="small", description="The role called.")
    stop_after: int | None = None
    """Leave the stream after this many deltas (None: read to the end)."""
    race: bool = False
    """Two streams; the first to finish wins and the other task is cancelled."""


async def probe(problem: str, ctx: Context, params: ProbeParams) -> StrategyResult:
    model = ctx.models[params.role]
    if params.race:
        return await _race(problem, ctx, params)
    request = ModelRequest(messages=[{"role": "user", "content": problem}], max_tokens=64)
    pieces: list[str] = []
    async with model.stream(request) as stream:
        async for piece in stream:
            pieces.append(piece)
            if params.stop_after is not None and len(pieces) >= params.stop_after:
                break
    assert stream.result is not None
    choice = stream.result.choices[0]
    ctx.trace("streamed", pieces=pieces, finish_reason=choice.finish_reason, text=choice.text)
    return StrategyResult(answer=str(len(pieces)), text=choice.text)


async def _race(problem: str, ctx: Context, params: ProbeParams) -> StrategyResult:
    model = ctx.models[params.role]
    results: dict[int, Any] = {}

    async def one(i: int, content: str) -> int:
        request = ModelRequest(messages=[{"role": "user", "content": content}], max_tokens=64)
        async with model.stream(request) as stream:
            async for _ in stream:
                pass
        results[i] = stream.result
        return i

    tasks = [
        asyncio.create_task(one(i, f"{problem} {kind}")) for i, kind in enumerate(["fast", "slow"])
    ]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    # Replayed streams all finish at once; the recorded cancellations say who lost.
    finished = [t.result() for t in done]
    winner = min(i for i in finished if results[i].choices[0].finish_reason != CANCELLED)
    return StrategyResult(answer=str(winner), text=results[winner].choices[0].text)


async def wait_for(condition: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.fixture
def stream_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        STRATEGIES, "stream_probe", Strategy("stream_probe", ProbeParams, probe, "test probe")
    )


def config(*rules: Rule, **kwargs: Any) -> SimulatorConfig:
    return SimulatorConfig(models=["sim-small", "sim-large"], rules=list(rules), **kwargs)


async def run(rt: Runtime, spec: dict[str, Any]) -> tuple[str, Any]:
    job_id = await submit_job(rt.sessions, rt.pools, question="Count", strategy=spec, seed=1)
    return job_id, await rt.runner.run(job_id)


async def journal_of(rt: Runtime, job_id: str) -> list[Any]:
    async with rt.sessions() as session:
        return list(await repo.list_calls(session, job_id))


async def events_of(rt: Runtime, job_id: str, name: str) -> list[dict[str, Any]]:
    async with rt.sessions() as session:
        spans = await repo.list_spans(session, job_id)
    return [dict(s.attributes) for s in spans if s.name == name]


async def test_pool_stream_yields_deltas_and_the_server_usage(simulator: Simulator) -> None:
    simulator.set_config(config(Rule(replies=[REPLY])))
    pool = PoolClient("small", PoolSettings(endpoints=[simulator.url], model="sim-small"))
    stream = pool.stream(ModelRequest(prompt="Count", max_tokens=64))
    pieces = [d.text async for d in stream if d.text]
    await pool.aclose()
    assert "".join(pieces) == REPLY
    assert len(pieces) == 14  # one delta per simulator token: 8 words, '.', 4 words, '.'
    assert stream.finish_reason == "stop"
    assert stream.usage is not None and stream.usage.completion_tokens == 14
    assert len(stream.attempts) == 1 and stream.attempts[0].status == 200


async def test_pool_stream_retries_before_the_first_byte(simulator: Simulator) -> None:
    simulator.set_config(
        config(Rule(replies=[REPLY]), failures=[Failure(kind="status", status=503, times=1)])
    )
    settings = PoolSettings(endpoints=[simulator.url], model="sim-small", backoff_base_s=0.0)
    pool = PoolClient("small", settings)
    stream = pool.stream(ModelRequest(prompt="Count", max_tokens=64))
    text = "".join([d.text async for d in stream])
    await pool.aclose()
    assert text == REPLY
    assert [a.status for a in stream.attempts] == [503, 200]


async def test_read_to_the_end_is_journaled_and_replays_in_the_same_pieces(
    runtime: Runtime, simulator: Simulator, stream_probe: None
) -> None:
    simulator.set_config(config(Rule(replies=[REPLY])))
    job_id, outcome = await run(runtime, {"kind": "stream_probe"})
    assert outcome.status == "succeeded", outcome.error
    [entry] = await journal_of(runtime, job_id)
    assert entry.response["choices"][0]["finish_reason"] == "stop"
    assert "".join(entry.response["deltas"]) == REPLY
    assert entry.completion_tokens == 14
    before = simulator.stats.requests
    child_id = await create_replay(runtime.sessions, runtime.pools, job_id, mode="strict")
    child = await runtime.runner.run(child_id)
    assert child.status == "succeeded" and simulator.stats.requests == before
    assert await events_of(runtime, child_id, "streamed") == await events_of(
        runtime, job_id, "streamed"
    )


async def test_leaving_early_records_the_partial_call_as_cancelled(
    runtime: Runtime, simulator: Simulator, stream_probe: None
) -> None:
    # 30 ms a token: the 11 tokens left after the client goes take 330 ms, time enough
    # for the server to notice the disconnect even on a loaded machine.
    simulator.set_config(config(Rule(replies=[REPLY]), latency=Latency(per_token_ms=30)))
    job_id, outcome = await run(runtime, {"kind": "stream_probe", "stop_after": 3})
    assert outcome.status == "succeeded", outcome.error
    [event] = await events_of(runtime, job_id, "streamed")
    assert event["pieces"] == ["one", " two", " three"]
    assert event["finish_reason"] == CANCELLED
    [entry] = await journal_of(runtime, job_id)
    assert entry.response["choices"][0] == {
        "index": 0,
        "text": "one two three",
        "finish_reason": CANCELLED,
    }
    assert entry.completion_tokens == 3  # what was received, not the whole reply
    assert [(a["status"], a["error"]) for a in entry.attempts] == [(200, "cancelled")]
    assert outcome.usage["completion_tokens"] == 3
    # The server saw the client leave and stopped generating.
    assert entry.latency_ms < 14 * 30
    await wait_for(lambda: simulator.stats.aborted_requests == 1)


async def test_a_cancelled_stream_task_is_recorded_and_replayed(
    runtime: Runtime, simulator: Simulator, stream_probe: None
) -> None:
    simulator.set_config(
        config(
            Rule(match="fast", replies=["The answer is 1."], latency=Latency(per_token_ms=2)),
            Rule(match="slow", replies=[REPLY], latency=Latency(per_token_ms=40)),
        )
    )
    job_id, outcome = await run(runtime, {"kind": "stream_probe", "race": True})
    assert outcome.status == "succeeded", outcome.error
    assert outcome.result["answer"] == "0"
    entries = sorted(
        await journal_of(runtime, job_id), key=lambda e: e.request["messages"][0]["content"]
    )
    fast, slow = entries
    assert fast.response["choices"][0]["finish_reason"] == "stop"
    assert slow.response["choices"][0]["finish_reason"] == CANCELLED
    assert slow.completion_tokens < 14
    before = simulator.stats.requests
    child_id = await create_replay(runtime.sessions, runtime.pools, job_id, mode="strict")
    child = await runtime.runner.run(child_id)
    assert child.status == "succeeded", child.error
    assert child.result is not None and child.result["answer"] == "0"
    assert simulator.stats.requests == before
