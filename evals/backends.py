"""Where an eval's jobs run: in this process (a ``Runtime``) or on a Ponder server (REST,
through ``ponder_client``).

Both backends make ordinary jobs — each row of an eval keeps its job id, so ``ponder
trace <id>`` (or ``GET /v1/jobs/{id}/trace``) opens it — and read back the same
``JobRecord``. Cost is summed over the job's model-call spans rather than taken from
``usage.cost``: a span answered from the journal carries the cost recorded when the call
was first paid for, so a strict replay (which runs without pools, hence without prices)
reports the original cost instead of zero.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

import httpx

from core.db import repo
from core.errors import InvalidInput, NotFound, PonderError
from core.events import DecisionEvent, ModelCallEvent
from core.jobs import create_replay, submit_job
from core.runtime import Runtime
from ponder_client import AsyncPonderClient, PonderAPIError

T = TypeVar("T")


@dataclass
class JobRecord:
    job_id: str
    status: str
    answer: str | None
    budget_exhausted: bool
    error: dict[str, Any] | None
    usage: dict[str, Any]
    cost_by_role: dict[str, float] = field(default_factory=dict)
    cost_known: bool = True
    """False when a model call ran on a pool without prices: ``cost`` means nothing."""
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """The trace's events (``ctx.trace``: name, attributes), in order."""

    @property
    def cost(self) -> float | None:
        return sum(self.cost_by_role.values()) if self.cost_known else None


def _record(
    job_id: str,
    status: str,
    result: dict[str, Any] | None,
    usage: dict[str, Any] | None,
    error: dict[str, Any] | None,
    cost_by_role: dict[str, float],
    cost_known: bool = True,
    events: list[tuple[str, dict[str, Any]]] | None = None,
) -> JobRecord:
    result = result or {}
    return JobRecord(
        job_id=job_id,
        status=status,
        answer=result.get("answer"),
        budget_exhausted=bool(result.get("budget_exhausted", False)),
        error=error,
        usage=usage or {},
        cost_by_role=cost_by_role,
        cost_known=cost_known,
        events=events or [],
    )


class Backend(Protocol):
    async def submit(
        self, question: str, spec: dict[str, Any], budget: dict[str, Any], seed: int
    ) -> str:
        """Write one job; its id."""

    async def replay(
        self, parent_id: str, mode: Literal["strict", "live"], overrides: dict[str, Any]
    ) -> str:
        """A child job seeded with the parent's journal; its id."""

    async def run(self, job_id: str) -> JobRecord:
        """Run (or wait for) a job to a final state."""

    async def missing(self, job_ids: list[str]) -> list[str]:
        """Those of ``job_ids`` this backend does not know (replays need their parents)."""


class LocalBackend:
    """Jobs run in this process by ``Runtime.runner``, as ``ponder solve`` runs them."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def submit(
        self, question: str, spec: dict[str, Any], budget: dict[str, Any], seed: int
    ) -> str:
        return await submit_job(
            self.rt.sessions, self.rt.pools, question=question, strategy=spec,
            budget=budget, seed=seed,
        )  # fmt: skip

    async def replay(
        self, parent_id: str, mode: Literal["strict", "live"], overrides: dict[str, Any]
    ) -> str:
        return await create_replay(
            self.rt.sessions, self.rt.pools, parent_id, mode=mode, strategy_overrides=overrides
        )

    async def run(self, job_id: str) -> JobRecord:
        outcome = await self.rt.runner.run(job_id)
        cost: dict[str, float] = defaultdict(float)
        known = True
        events: list[tuple[str, dict[str, Any]]] = []
        async with self.rt.sessions() as session:
            for span in await repo.list_spans(session, job_id):
                if span.kind == "model_call":
                    attributes = span.attributes or {}
                    cost[str(attributes.get("role"))] += span.cost or 0.0
                    known = known and attributes.get("cost_known") is not False
                elif span.kind == "event":
                    events.append((span.name, dict(span.attributes or {})))
        return _record(
            job_id, outcome.status, outcome.result, outcome.usage, outcome.error, dict(cost),
            known, events,
        )  # fmt: skip

    async def missing(self, job_ids: list[str]) -> list[str]:
        async with self.rt.sessions() as session:
            return [j for j in job_ids if await repo.get_job(session, j) is None]


class RestBackend:
    """Jobs on a running Ponder server, through ``ponder_client``: submitted, followed
    over their event streams until final, and read back with their traces.

    The client is injected: tests pass one bound to an in-process server.
    """

    def __init__(self, client: AsyncPonderClient) -> None:
        self.client = client

    async def check(self) -> list[str]:
        """The server's strategy kinds; fails early on a bad URL or key."""
        catalog = await self._first_contact("GET /v1/strategies", self.client.strategies())
        return [item.kind for item in catalog]

    async def presets(self) -> dict[str, dict[str, Any]]:
        """The presets the key's tenant runs: shipped ones and its own, by name."""
        listed = await self._first_contact("GET /v1/presets", self.client.presets())
        return {p.name: p.spec for p in listed}

    async def _first_contact(self, what: str, call: Awaitable[T]) -> T:
        """A call made before any job: a server that cannot be reached, or refuses the
        key, is bad input (``--url``, ``--api-key``), not a crash."""
        try:
            return await call
        except httpx.HTTPError as exc:
            raise InvalidInput(
                f"cannot reach the Ponder server at {self.client.base_url}: {exc}", field="url"
            ) from None
        except PonderAPIError as exc:
            raise _api_error(exc, what) from None

    async def submit(
        self, question: str, spec: dict[str, Any], budget: dict[str, Any], seed: int
    ) -> str:
        try:
            job = await self.client.submit(question, strategy=spec, budget=budget, seed=seed)
        except PonderAPIError as exc:
            raise _api_error(exc, "POST /v1/jobs") from None
        return job.id

    async def replay(
        self, parent_id: str, mode: Literal["strict", "live"], overrides: dict[str, Any]
    ) -> str:
        try:
            job = await self.client.replay(parent_id, mode, overrides or None)
        except PonderAPIError as exc:
            raise _api_error(exc, f"POST /v1/jobs/{parent_id}/replay") from None
        return job.id

    async def run(self, job_id: str) -> JobRecord:
        try:
            job = await self.client.wait(job_id, timeout=None)
            trace = await self.client.trace(job_id)
        except PonderAPIError as exc:
            raise _api_error(exc, f"GET /v1/jobs/{job_id}") from None
        cost: dict[str, float] = defaultdict(float)
        known = True
        events: list[tuple[str, dict[str, Any]]] = []
        for event in trace.events:
            if isinstance(event, ModelCallEvent):
                cost[str(event.role)] += event.cost
                known = known and event.cost_known
            elif isinstance(event, DecisionEvent):
                events.append((event.name, dict(event.attributes)))
        return _record(
            job_id, job.status, job.result, job.usage, job.error, dict(cost), known, events
        )

    async def missing(self, job_ids: list[str]) -> list[str]:
        absent = []
        for job_id in job_ids:
            try:
                await self.client.get(job_id)
            except PonderAPIError as exc:
                if exc.status != 404:
                    raise _api_error(exc, f"GET /v1/jobs/{job_id}") from None
                absent.append(job_id)
        return absent


def _api_error(exc: PonderAPIError, where: str) -> PonderError:
    if exc.status == 404:
        return NotFound(f"{where}: {exc.message}")
    if exc.status in (401, 403, 409, 413, 422):
        return InvalidInput(f"{where}: {exc.message}", field=exc.field)
    return PonderError(f"{where}: HTTP {exc.status}: {exc.message}")
