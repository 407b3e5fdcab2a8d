"""The job runner end to end against the simulator: answers, traces, journal, budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.db import repo
from core.jobs import create_replay, submit_job
from core.runtime import Runtime
from core.simulator.config import Latency, Rule, SimulatorConfig
from core.simulator.server import Simulator
from tests.fixtures.runtime import simulator_settings


def script(*rules: Rule, latency: Latency | None = None) -> SimulatorConfig:
    return SimulatorConfig(
        models=["sim-small", "sim-large"], rules=list(rules), latency=latency or Latency()
    )


async def solve(rt: Runtime, strategy: dict[str, Any], **kwargs: Any) -> tuple[str, Any]:
    job_id = await submit_job(
        rt.sessions, rt.pools, question="What is 2 + 3?", strategy=strategy, seed=7, **kwargs
    )
    outcome = await rt.runner.run(job_id)
    return job_id, outcome


async def spans_of(rt: Runtime, job_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    async with rt.sessions() as session:
        spans = await repo.list_spans(session, job_id)
    return [(s.kind, s.name, s.attributes) for s in spans]


# What legitimately differs between a job and its replay: how each call was answered.
HOW_ANSWERED = {
    "journal",
    "latency_ms",
    "recorded_latency_ms",
    "attempts",
    "emulated_n",
    "finish_reasons",
    "endpoint",
    "mode",
}


def comparable(
    spans: list[tuple[str, str, dict[str, Any]]],
) -> list[tuple[str, str, dict[str, Any]]]:
    return [(k, n, {x: y for x, y in a.items() if x not in HOW_ANSWERED}) for k, n, a in spans]


async def test_direct_answers_and_traces_the_call(runtime: Runtime, simulator: Simulator) -> None:
    simulator.set_config(script(Rule(replies=["2 + 3 = 5. The answer is 5."])))
    job_id, outcome = await solve(runtime, {"kind": "direct"})
    assert outcome.status == "succeeded"
    assert outcome.result["answer"] == "5"
    kinds = [(k, n) for k, n, _ in await spans_of(runtime, job_id)]
    assert kinds == [
        ("job", "job"),
        ("strategy", "direct"),
        ("model_call", "small.generate"),
        ("event", "answer"),
    ]
    assert outcome.usage["by_role"]["small"]["calls"] == 1
    assert outcome.usage["completion_tokens"] > 0
    assert simulator.stats.requests == 1


async def test_self_consistency_votes_over_normalised_answers(
    runtime: Runtime, simulator: Simulator
) -> None:
    replies = ["The answer is 5.", "so \\boxed{5.0}", "The answer is 7.", "#### 5"]
    simulator.set_config(script(Rule(replies=replies)))
    job_id, outcome = await solve(runtime, {"kind": "self_consistency", "n": 4})
    assert outcome.result["answer"] == "5"
    assert outcome.result["votes"] == {"5": 3, "7": 1}
    events = [a for k, n, a in await spans_of(runtime, job_id) if n == "vote"]
    assert events[0]["votes"] == {"5": 3, "7": 1}
    assert events[0]["samples"] == 4


async def test_adaptive_self_consistency_stops_once_settled(
    runtime: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(script(Rule(replies=["The answer is 5."])))
    _job_id, outcome = await solve(
        runtime,
        {"kind": "self_consistency", "n": 16, "adaptive": True, "batch_size": 2, "min_samples": 2},
    )
    assert outcome.result["answer"] == "5"
    # 4 unanimous votes reach P(share > 1/2) = 0.97 >= 0.95 after two calls of 2.
    assert outcome.result["details"] == {"samples": 4, "stopped": "confident"}
    assert simulator.stats.requests == 2


async def test_strict_replay_reproduces_with_zero_model_calls(
    runtime: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(script(Rule(replies=["The answer is 5.", "The answer is 6."])))
    parent_id, parent = await solve(runtime, {"kind": "self_consistency", "n": 3})
    before = simulator.stats.requests
    child_id = await create_replay(runtime.sessions, runtime.pools, parent_id, mode="strict")
    child = await runtime.runner.run(child_id)
    assert simulator.stats.requests == before
    assert child.status == "succeeded"
    assert child.result == parent.result
    assert child.live_calls == 0 and child.replayed_calls == 1
    assert comparable(await spans_of(runtime, child_id)) == comparable(
        await spans_of(runtime, parent_id)
    )


async def test_strict_replay_with_changed_params_fails_clearly(
    runtime: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(script(Rule(replies=["The answer is 5."])))
    parent_id, _ = await solve(runtime, {"kind": "direct"})
    child_id = await create_replay(
        runtime.sessions,
        runtime.pools,
        parent_id,
        mode="strict",
        strategy_overrides={"max_tokens": 99},
    )
    child = await runtime.runner.run(child_id)
    assert child.status == "failed" and child.error is not None
    assert child.error["code"] == "journal_miss"
    assert "not in the journal" in child.error["message"]


async def test_fork_calls_only_what_is_new(runtime: Runtime, simulator: Simulator) -> None:
    # Alternating answers keep the vote open, so all three calls are made.
    simulator.set_config(script(Rule(replies=["The answer is 5.", "The answer is 7."])))
    spec = {
        "kind": "self_consistency",
        "n": 6,
        "adaptive": True,
        "batch_size": 2,
        "min_samples": 6,
        "confidence": 0.99,
    }
    parent_id, parent = await solve(runtime, spec)
    assert parent.live_calls == 3
    before = simulator.stats.requests
    child_id = await create_replay(
        runtime.sessions, runtime.pools, parent_id, mode="live", fork_from=1
    )
    child = await runtime.runner.run(child_id)
    assert (child.replayed_calls, child.live_calls) == (1, 2)
    assert simulator.stats.requests - before == 2
    async with runtime.sessions() as session:
        job = await repo.get_job(session, child_id)
    assert job is not None and job.parent_job_id == parent_id and job.fork_point == 1


async def test_fan_out_under_a_token_budget_never_exceeds_it(
    runtime: Runtime, simulator: Simulator
) -> None:
    long_reply = " ".join(["word"] * 60) + " The answer is {}."
    simulator.set_config(script(Rule(replies=[long_reply.format(5), long_reply.format(7)])))
    spec = {
        "kind": "self_consistency",
        "n": 12,
        "adaptive": True,
        "batch_size": 4,
        "min_samples": 12,
        "max_tokens": 100,
    }
    job_id, outcome = await solve(runtime, spec, budget={"max_tokens": 500})
    assert outcome.usage["completion_tokens"] <= 500
    assert outcome.status == "succeeded"
    assert outcome.result["budget_exhausted"] is True
    events = [n for _, n, _ in await spans_of(runtime, job_id)]
    assert "budget_clamp" in events and "budget_exhausted" in events


async def test_exhaustion_returns_the_best_answer_so_far(
    runtime: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(
        script(Rule(replies=["The answer is 5.", "The answer is 5.", "The answer is 8."]))
    )
    spec = {"kind": "self_consistency", "n": 9, "adaptive": True, "batch_size": 3, "min_samples": 9}
    _, outcome = await solve(runtime, spec, budget={"max_calls": 1})
    assert outcome.result["answer"] == "5"
    assert outcome.result["votes"] == {"5": 2, "8": 1}
    assert outcome.result["budget_exhausted"] is True
    assert outcome.usage["calls"] == 1


async def test_concurrent_children_keep_deterministic_keys(
    runtime: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(script(Rule(replies=["The answer is 5."])))
    spec = {"kind": "self_consistency", "n": 4}
    a_id, _ = await solve(runtime, spec)
    b_id, _ = await solve(runtime, spec)
    async with runtime.sessions() as session:
        a = [(c.key, c.occurrence) for c in await repo.list_calls(session, a_id)]
        b = [(c.key, c.occurrence) for c in await repo.list_calls(session, b_id)]
    assert a == b  # same seed, same spec: the same journal keys


@pytest.mark.parametrize(
    ("strategy", "field"),
    [
        ({"kind": "nope"}, "strategy.kind"),
        ({"kind": "self_consistency", "n": 0}, "strategy.n"),
        ({"kind": "direct", "role": "huge"}, "roles.huge"),
    ],
)
async def test_bad_input_names_the_field_and_writes_nothing(
    runtime: Runtime, strategy: dict[str, Any], field: str
) -> None:
    from core.errors import InvalidInput

    with pytest.raises(InvalidInput) as caught:
        await submit_job(runtime.sessions, runtime.pools, question="q", strategy=strategy)
    assert caught.value.field == field
    async with runtime.sessions() as session:
        assert await repo.find_job_by_prefix(session, "") == []


async def test_strict_replay_reports_the_cost_its_parent_paid(
    simulator: Simulator, sqlite_database_url: str, tmp_path: Path
) -> None:
    simulator.set_config(script(Rule(replies=["The answer is 5."])))
    settings = simulator_settings(
        simulator.url, sqlite_database_url, tmp_path, price_input_per_1k=1.0,
        price_output_per_1k=2.0,
    )  # fmt: skip
    async with Runtime(settings, roles={"small", "large"}) as rt:
        parent_id, parent = await solve(rt, {"kind": "self_consistency", "n": 2})
        assert parent.usage["cost"] > 0
        child_id = await create_replay(rt.sessions, rt.pools, parent_id, mode="strict")
        child = await rt.runner.run(child_id)
    # No pool (hence no price) is used by a strict replay; the journal knows the cost.
    assert child.usage is not None and parent.usage is not None
    assert child.usage["cost"] == parent.usage["cost"]
    assert child.usage["by_role"] == parent.usage["by_role"]
