"""Helpers for strategy tests: run a spec as a job, read its decisions back.

async def test_votes(rt, simulator):
    simulator.set_config(script(Rule(replies=["The answer is 5."])))
    job = await solve(rt, {"kind": "self_consistency", "n": 3})
    assert job.answer == "5"
    assert [n for n, _ in job.events] == ["sample", "sample", "sample", "vote"]
    assert job.tokens("small") <= 3 * 512
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.db import repo
from core.jobs import create_replay, submit_job
from core.runner import RunOutcome
from core.runtime import Runtime
from core.simulator.config import Latency, Rule, SimulatorConfig

QUESTION = "What is 2 + 3?"


def script(*rules: Rule, latency: Latency | None = None, **config: Any) -> SimulatorConfig:
    """A simulator script serving models ``sim-small`` and ``sim-large``."""
    return SimulatorConfig(
        models=["sim-small", "sim-large"], rules=list(rules), latency=latency or Latency(), **config
    )


@dataclass
class Span:
    kind: str
    name: str
    attributes: dict[str, Any]
    parent_id: str | None
    id: str
    completion_tokens: int


@dataclass
class SolvedJob:
    job_id: str
    outcome: RunOutcome
    spans: list[Span] = field(default_factory=list)

    @property
    def result(self) -> dict[str, Any]:
        assert self.outcome.result is not None, self.outcome
        return self.outcome.result

    @property
    def answer(self) -> str | None:
        answer: str | None = self.result["answer"]
        return answer

    @property
    def events(self) -> list[tuple[str, dict[str, Any]]]:
        """Decision events (``ctx.trace``) in trace order, as (name, attributes)."""
        return [(s.name, s.attributes) for s in self.spans if s.kind == "event"]

    def events_named(self, name: str) -> list[dict[str, Any]]:
        return [a for n, a in self.events if n == name]

    @property
    def calls(self) -> list[Span]:
        """Model-call spans in issue order."""
        return [s for s in self.spans if s.kind == "model_call"]

    def tokens(self, role: str | None = None) -> int:
        """Completion tokens charged (to one role, or in all)."""
        usage = self.outcome.usage or {}
        if role is None:
            return int(usage.get("completion_tokens", 0))
        return int(usage.get("by_role", {}).get(role, {}).get("completion_tokens", 0))

    def calls_to(self, role: str) -> int:
        usage = self.outcome.usage or {}
        return int(usage.get("by_role", {}).get(role, {}).get("calls", 0))


async def solve(
    rt: Runtime,
    strategy: dict[str, Any],
    *,
    question: str = QUESTION,
    budget: dict[str, Any] | None = None,
    seed: int = 7,
) -> SolvedJob:
    """Submit and run one job in-process; return its outcome and trace."""
    kwargs: dict[str, Any] = {"budget": budget} if budget is not None else {}
    job_id = await submit_job(
        rt.sessions, rt.pools, question=question, strategy=strategy, seed=seed, **kwargs
    )
    outcome = await rt.runner.run(job_id)
    return SolvedJob(job_id, outcome, await spans_of(rt, job_id))


async def replay(rt: Runtime, job_id: str, **kwargs: Any) -> SolvedJob:
    """Replay (``mode="strict"`` by default) and run the child job."""
    kwargs.setdefault("mode", "strict")
    child_id = await create_replay(rt.sessions, rt.pools, job_id, **kwargs)
    outcome = await rt.runner.run(child_id)
    return SolvedJob(child_id, outcome, await spans_of(rt, child_id))


async def spans_of(rt: Runtime, job_id: str) -> list[Span]:
    async with rt.sessions() as session:
        rows = await repo.list_spans(session, job_id)
    return [
        Span(s.kind, s.name, dict(s.attributes or {}), s.parent_id, s.id, s.completion_tokens or 0)
        for s in rows
    ]
