"""One journaled-call skeleton, two bodies: what a plain and a streamed call leave behind.

The model_call span's attributes and the journal row, live and replayed, pinned for
both bodies (``RoleModel.generate`` and ``RoleModel.stream``), so that the shared
skeleton cannot drop or rename what the dashboard, diff and replay read.
"""

from __future__ import annotations

from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict

from core.db import repo
from core.jobs import create_replay, submit_job
from core.runtime import Runtime
from core.simulator.config import Rule, SimulatorConfig
from core.simulator.server import Simulator
from strategies.protocol import Context, ModelRequest, StrategyResult, role_field
from strategies.registry import STRATEGIES, Strategy

REPLY = "2 + 3 = 5. The answer is 5."


class BothParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["both_bodies"] = "both_bodies"
    role: str = role_field(default="small", description="The role called.")


async def both(problem: str, ctx: Context, params: BothParams) -> StrategyResult:
    model = ctx.models[params.role]
    messages = [{"role": "user", "content": problem}]
    plain = await model.generate(ModelRequest(messages=messages, max_tokens=32, seed=1))
    async with model.stream(ModelRequest(messages=messages, max_tokens=32, seed=2)) as stream:
        async for _ in stream:
            pass
    assert stream.result is not None
    ctx.trace("seen", plain=plain.choices[0].text, streamed=stream.result.choices[0].text)
    return StrategyResult(answer="5", text=stream.result.choices[0].text)


@pytest.fixture
def both_bodies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        STRATEGIES, "both_bodies", Strategy("both_bodies", BothParams, both, "test probe")
    )


async def model_spans(rt: Runtime, job_id: str) -> dict[str, dict[str, Any]]:
    async with rt.sessions() as session:
        spans = await repo.list_spans(session, job_id)
    return {s.name: dict(s.attributes) for s in spans if s.kind == "model_call"}


async def test_plain_and_streamed_calls_record_the_same_shape_live_and_replayed(
    runtime: Runtime, simulator: Simulator, both_bodies: None
) -> None:
    simulator.set_config(SimulatorConfig(rules=[Rule(replies=[REPLY])]))
    job_id = await submit_job(
        runtime.sessions, runtime.pools, question="2+3?", strategy={"kind": "both_bodies"}
    )
    outcome = await runtime.runner.run(job_id)
    assert outcome.status == "succeeded", outcome.error

    live = await model_spans(runtime, job_id)
    # The simulator's pools have no prices: every call's cost is unknown ("n/a").
    usage = {"reasoning_tokens", "cost_known"}
    common = {"role", "model", "key", "n", "journal", "endpoint", "latency_ms", "attempts"} | usage
    assert set(live["small.generate"]) == common | {"emulated_n", "finish_reasons"}
    assert set(live["small.stream"]) == common | {"stream", "finish_reasons"}
    for name in ("small.generate", "small.stream"):
        attrs = live[name]
        assert (attrs["journal"], attrs["n"], attrs["attempts"]) == ("miss", 1, 1)
        assert attrs["finish_reasons"] == ["stop"]
        assert attrs["endpoint"] == "endpoint 1 of 1"  # by position: tenants read spans
    assert live["small.stream"]["stream"] is True
    assert live["small.generate"]["emulated_n"] is False

    async with runtime.sessions() as session:
        plain, streamed = sorted(
            await repo.list_calls(session, job_id), key=lambda e: "deltas" in e.response
        )
    assert set(plain.response) == {"model", "choices", "emulated_n", "cost_known"}
    assert set(streamed.response) == {
        "model", "choices", "deltas", "emulated_n", "prompt_tokens_estimated", "cost_known"
    }  # fmt: skip
    for entry in (plain, streamed):
        assert entry.response["choices"][0]["text"] == REPLY
        assert [a["status"] for a in entry.attempts] == [200]
        assert entry.completion_tokens > 0
    assert "".join(streamed.response["deltas"]) == REPLY

    before = simulator.stats.requests
    child_id = await create_replay(runtime.sessions, runtime.pools, job_id, mode="strict")
    child = await runtime.runner.run(child_id)
    assert child.status == "succeeded", child.error
    assert simulator.stats.requests == before
    assert child.usage is not None and outcome.usage is not None
    assert child.usage["completion_tokens"] == outcome.usage["completion_tokens"]
    replayed = await model_spans(runtime, child_id)
    hit = {"role", "model", "key", "n", "journal", "endpoint", "recorded_latency_ms"} | usage
    assert set(replayed["small.generate"]) == hit
    assert set(replayed["small.stream"]) == hit | {"stream", "finish_reasons"}
    assert {a["journal"] for a in replayed.values()} == {"hit"}
    for name, attrs in replayed.items():
        assert attrs["key"] == live[name]["key"]
