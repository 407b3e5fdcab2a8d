"""The job's deadline (``budget.max_seconds``) stops model calls that are under way.

A streamed call used to ignore it and read to the end; now the pool bounds every step
of the stream by the deadline, the part received is journaled and paid, and the
strategy sees ``BudgetExhausted("seconds")``, as it does for every other budget. A
plain call cut by the deadline ends the same way instead of failing the job.

Counts of tokens, not clocks, say whether the call was cut: the un-cut reply is long
enough that reading it whole takes many times the job's budget.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict

from core.db import repo
from core.errors import ModelTimeout
from core.jobs import submit_job
from core.pools.client import PoolClient
from core.runtime import Runtime
from core.settings import PoolSettings
from core.simulator.config import Latency, Rule, SimulatorConfig
from core.simulator.server import Simulator
from strategies.protocol import (
    CANCELLED,
    BudgetExhausted,
    Context,
    ModelRequest,
    StrategyResult,
    role_field,
)
from strategies.registry import STRATEGIES, Strategy

WORDS = 200
REPLY = " ".join(f"w{i}" for i in range(WORDS))  # one simulator token per word
SLOW = Latency(per_token_ms=20)  # the whole reply: 4 s; the jobs below have 0.5 s


class ProbeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["deadline_probe"] = "deadline_probe"
    role: str = role_field(default="small", description="The role called.")


async def probe(problem: str, ctx: Context, params: ProbeParams) -> StrategyResult:
    """Stream the reply; on exhaustion answer with what arrived (anytime)."""
    request = ModelRequest(messages=[{"role": "user", "content": problem}], max_tokens=WORDS)
    pieces: list[str] = []
    stream = None
    try:
        async with ctx.models[params.role].stream(request) as stream:
            async for piece in stream:
                pieces.append(piece)
    except BudgetExhausted as exc:
        ctx.trace("budget_exhausted", what=exc.what, pieces=len(pieces))
    assert stream is not None and stream.result is not None
    choice = stream.result.choices[0]
    return StrategyResult(answer=str(len(pieces)), text=choice.text, budget_exhausted=True)


@pytest.fixture
def deadline_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        STRATEGIES, "deadline_probe", Strategy("deadline_probe", ProbeParams, probe, "test probe")
    )


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def submit(rt: Runtime, strategy: dict[str, Any], max_seconds: float) -> str:
    return await submit_job(
        rt.sessions,
        rt.pools,
        question="Count",
        strategy=strategy,
        budget={"max_seconds": max_seconds},
        seed=1,
    )


async def test_a_streamed_call_stops_at_the_jobs_deadline(
    runtime: Runtime, simulator: Simulator, deadline_probe: None
) -> None:
    simulator.set_config(SimulatorConfig(rules=[Rule(replies=[REPLY])], latency=SLOW))
    job_id = await submit(runtime, {"kind": "deadline_probe"}, max_seconds=0.5)
    outcome = await runtime.runner.run(job_id)

    assert outcome.status == "succeeded", outcome.error
    assert outcome.result is not None and outcome.result["budget_exhausted"] is True
    received = int(outcome.result["answer"])
    assert 0 < received < WORDS // 2  # cut short, far from the whole reply
    async with runtime.sessions() as session:
        [entry] = await repo.list_calls(session, job_id)
        spans = await repo.list_spans(session, job_id)
    # The part received is on record and paid for, marked as stopped by the budget.
    assert entry.response["choices"][0]["finish_reason"] == CANCELLED
    assert entry.response["budget_exhausted"] == "seconds"
    assert len(entry.response["deltas"]) == received
    assert entry.response["choices"][0]["text"] == outcome.result["text"]
    assert entry.completion_tokens == received
    assert outcome.usage is not None and outcome.usage["completion_tokens"] == received
    assert entry.attempts[-1]["error"] == "deadline"
    [event] = [s.attributes for s in spans if s.name == "budget_exhausted"]
    assert event == {"what": "seconds", "pieces": received}
    [call] = [s for s in spans if s.kind == "model_call"]
    assert call.attributes["finish_reasons"] == [CANCELLED]
    assert call.completion_tokens == received
    # The server learnt that the client left, and stopped decoding.
    await wait_for(lambda: simulator.stats.aborted_requests == 1)


async def test_a_plain_call_cut_by_the_deadline_ends_the_job_as_budget_exhausted(
    runtime: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(SimulatorConfig(rules=[Rule(replies=[REPLY])], latency=SLOW))
    job_id = await submit(runtime, {"kind": "direct", "max_tokens": WORDS}, max_seconds=0.5)
    outcome = await runtime.runner.run(job_id)

    # Not a failed job (model_timeout): the anytime outcome of an exhausted budget.
    assert outcome.status == "succeeded", outcome.error
    assert outcome.result is not None and outcome.result["budget_exhausted"] is True
    assert outcome.result["answer"] is None
    async with runtime.sessions() as session:
        assert list(await repo.list_calls(session, job_id)) == []  # nothing was received
        spans = await repo.list_spans(session, job_id)
    # direct's own anytime branch ran: it caught BudgetExhausted, as for any budget.
    assert [s.attributes for s in spans if s.name == "budget_exhausted"] == [{"best": None}]
    [call] = [s for s in spans if s.kind == "model_call"]
    assert call.attributes["error"].startswith("BudgetExhausted: budget exhausted: seconds")


async def test_pool_stream_deadline_counts_the_consumers_time_between_deltas(
    simulator: Simulator,
) -> None:
    """A fake clock moved by the consumer: the deadline passes between two deltas."""
    simulator.set_config(SimulatorConfig(rules=[Rule(replies=[REPLY])], latency=SLOW))
    now = [0.0]
    pool = PoolClient(
        "small",
        PoolSettings(endpoints=[simulator.url], model="sim-small"),
        clock=lambda: now[0],
    )
    stream = pool.stream(ModelRequest(prompt="Count", max_tokens=WORDS), timeout_s=10.0)
    texts: list[str] = []
    try:
        with pytest.raises(ModelTimeout, match=r"10\.0 s deadline"):
            async for delta in stream:
                texts.append(delta.text)
                if len(texts) == 5:
                    now[0] = 10.0  # the consumer took all the time left
    finally:
        await pool.aclose()
    assert len(texts) == 5 and stream.deltas == 5
    assert [(a.status, a.error) for a in stream.attempts] == [(200, "deadline")]
    [state] = pool.snapshot()
    # The deadline is the caller's limit, not the endpoint's fault.
    assert (state.outstanding, state.consecutive_failures, state.breaker) == (0, 0, "closed")
    await wait_for(lambda: simulator.stats.aborted_requests == 1)
