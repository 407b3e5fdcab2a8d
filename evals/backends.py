"""Where an eval's jobs run: in this process (a ``Runtime``) or on a Ponder server (REST).

Both backends make ordinary jobs — each row of an eval keeps its job id, so ``ponder
trace <id>`` (or ``GET /v1/jobs/{id}/trace``) opens it — and read back the same
``JobRecord``. Cost is summed over the job's model-call spans rather than taken from
``usage.cost``: a span answered from the journal carries the cost recorded when the call
was first paid for, so a strict replay (which runs without pools, hence without prices)
reports the original cost instead of zero.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import httpx

from core.db import repo
from core.errors import InvalidInput, NotFound, PonderError
from core.jobs import create_replay, submit_job
from core.runtime import Runtime

FINAL = ("succeeded", "failed", "cancelled")


@dataclass
class JobRecord:
    job_id: str
    status: str
    answer: str | None
    budget_exhausted: bool
    error: dict[str, Any] | None
    usage: dict[str, Any]
    cost_by_role: dict[str, float] = field(default_factory=dict)

    @property
    def cost(self) -> float:
        return sum(self.cost_by_role.values())


def _record(
    job_id: str,
    status: str,
    result: dict[str, Any] | None,
    usage: dict[str, Any] | None,
    error: dict[str, Any] | None,
    cost_by_role: dict[str, float],
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
        async with self.rt.sessions() as session:
            for span in await repo.list_spans(session, job_id):
                if span.kind == "model_call":
                    cost[str((span.attributes or {}).get("role"))] += span.cost or 0.0
        return _record(
            job_id, outcome.status, outcome.result, outcome.usage, outcome.error, dict(cost)
        )

    async def missing(self, job_ids: list[str]) -> list[str]:
        async with self.rt.sessions() as session:
            return [j for j in job_ids if await repo.get_job(session, j) is None]


class RestBackend:
    """Jobs on a running Ponder server (``POST /v1/jobs``, polled until final).

    The client is injected: tests pass one bound to an in-process server.
    """

    def __init__(
        self, client: httpx.AsyncClient, *, poll_s: float = 0.05, max_poll_s: float = 1.0
    ) -> None:
        self.client = client
        self.poll_s = poll_s
        self.max_poll_s = max_poll_s

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        response = await self.client.request(method, path, json=body)
        if response.status_code >= 400:
            raise _api_error(response)
        return response.json()

    async def check(self) -> list[str]:
        """The server's strategy kinds; fails early on a bad URL or key."""
        try:
            catalog = await self._call("GET", "/v1/strategies")
        except httpx.HTTPError as exc:
            raise InvalidInput(
                f"cannot reach the Ponder server at {self.client.base_url}: {exc}",
                field="url",
            ) from None
        return [str(item["kind"]) for item in catalog]

    async def submit(
        self, question: str, spec: dict[str, Any], budget: dict[str, Any], seed: int
    ) -> str:
        body = {"question": question, "strategy": spec, "budget": budget, "seed": seed}
        job = await self._call("POST", "/v1/jobs", body)
        return str(job["id"])

    async def replay(
        self, parent_id: str, mode: Literal["strict", "live"], overrides: dict[str, Any]
    ) -> str:
        body: dict[str, Any] = {"mode": mode}
        if overrides:
            body["strategy"] = overrides
        job = await self._call("POST", f"/v1/jobs/{parent_id}/replay", body)
        return str(job["id"])

    async def run(self, job_id: str) -> JobRecord:
        delay = self.poll_s
        while True:
            job = await self._call("GET", f"/v1/jobs/{job_id}")
            if job["status"] in FINAL:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, self.max_poll_s)
        trace = await self._call("GET", f"/v1/jobs/{job_id}/trace")
        cost: dict[str, float] = defaultdict(float)
        for event in trace["events"]:
            if event.get("type") == "model_call":
                cost[str(event.get("role"))] += float(event.get("cost") or 0.0)
        return _record(job_id, job["status"], job["result"], job["usage"], job["error"], dict(cost))

    async def missing(self, job_ids: list[str]) -> list[str]:
        absent = []
        for job_id in job_ids:
            try:
                await self._call("GET", f"/v1/jobs/{job_id}")
            except NotFound:
                absent.append(job_id)
        return absent


def _api_error(response: httpx.Response) -> PonderError:
    try:
        error = response.json()["error"]
        message, field_ = str(error["message"]), error.get("field")
    except (ValueError, KeyError, TypeError):
        message, field_ = response.text[:200], None
    where = f"{response.request.method} {response.request.url.path}"
    if response.status_code == 404:
        return NotFound(f"{where}: {message}")
    if response.status_code in (401, 403, 409, 413, 422):
        return InvalidInput(f"{where}: {message}", field=field_)
    return PonderError(f"{where}: HTTP {response.status_code}: {message}")
