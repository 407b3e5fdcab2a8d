"""What the sync and async clients share: the requests each method sends and how an
answer is read. No I/O here; ``_sync`` and ``_async`` only move the bytes."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter

from ponder_client.errors import PonderAPIError
from ponder_client.models import JobOut

DEFAULT_URL = "http://127.0.0.1:8000"
"""Where ``ponder serve`` listens by default."""
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
STREAM_READ_TIMEOUT_S = 60.0
"""An event stream sends a keep-alive comment after 15 s without a message: a read that
waits four times that long means the connection is dead, and the stream reconnects."""
MAX_RECONNECTS = 5
"""Reconnections in a row, with no event (or answer) in between, before ``events()``
or ``wait()`` gives up."""

Mode = Literal["strict", "live"]
Priority = Literal["high", "default", "low"]
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] | None = None


def auth_headers(api_key: str | None) -> dict[str, str]:
    key = api_key if api_key is not None else os.environ.get("PONDER_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def seg(value: str) -> str:
    """One path segment: a job id or a preset name can never reach another route."""
    return quote(value, safe="")


def submit_call(
    question: str | None,
    *,
    strategy: dict[str, Any] | str | None,
    budget: dict[str, Any] | None,
    roles: dict[str, str] | None,
    seed: int | None,
    priority: Priority | None,
    idempotency_key: str | None,
    fields: dict[str, Any],
) -> Call:
    named = {
        "question": question,
        "strategy": strategy,
        "budget": budget,
        "roles": roles,
        "seed": seed,
        "priority": priority,
    }
    # Unset fields are left out, so the server's defaults apply; ``fields`` go as given
    # (``messages``, ``tools``, ``response_format``...): the server validates them.
    body = {k: v for k, v in named.items() if v is not None} | fields
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else {}
    return Call("POST", "/v1/jobs", body, headers)


def replay_call(
    job_id: str,
    *,
    mode: Mode,
    fork_from: int | None,
    strategy: dict[str, Any] | None,
    roles: dict[str, str] | None,
    priority: Priority | None,
    fields: dict[str, Any],
) -> Call:
    named = {
        "mode": mode,
        "fork_from": fork_from,
        "strategy": strategy,
        "roles": roles,
        "priority": priority,
    }
    body = {k: v for k, v in named.items() if v is not None} | fields
    return Call("POST", f"/v1/jobs/{seg(job_id)}/replay", body)


def query(params: dict[str, Any]) -> dict[str, Any]:
    """Query parameters with the unset (None) left out, so the server's defaults apply;
    a ``datetime`` goes as ISO 8601 (one without a zone is read as UTC by the server)."""
    return {
        k: v.isoformat() if isinstance(v, datetime) else v
        for k, v in params.items()
        if v is not None
    }


def list_call(
    *,
    status: str | None,
    strategy: str | None,
    model: str | None,
    q: str | None,
    tenant: str | None,
    created_after: str | datetime | None,
    created_before: str | datetime | None,
    min_cost: float | None,
    max_cost: float | None,
    min_latency_ms: float | None,
    max_latency_ms: float | None,
    cursor: str | None,
    limit: int | None,
) -> Call:
    params = {
        "status": status, "strategy": strategy, "model": model, "q": q, "tenant": tenant,
        "created_after": created_after, "created_before": created_before,
        "min_cost": min_cost, "max_cost": max_cost,
        "min_latency_ms": min_latency_ms, "max_latency_ms": max_latency_ms,
        "cursor": cursor, "limit": limit,
    }  # fmt: skip
    return Call("GET", "/v1/jobs", params=query(params))


def experiments_call(cursor: str | None, limit: int | None) -> Call:
    return Call("GET", "/v1/experiments", params=query({"cursor": cursor, "limit": limit}))


def experiment_create_call(
    name: str,
    arms: Sequence[Mapping[str, Any]],
    *,
    dataset: Mapping[str, str] | None,
    problems: int | None,
    settings: Mapping[str, Any] | None,
    params: Mapping[str, Any] | None,
    parent_experiment_id: str | None,
) -> Call:
    named = {
        "dataset": dataset,
        "problems": problems,
        "settings": settings,
        "params": params,
        "parent_experiment_id": parent_experiment_id,
    }
    body: dict[str, Any] = {"name": name, "arms": [dict(a) for a in arms]}
    body |= {k: dict(v) if isinstance(v, Mapping) else v for k, v in named.items() if v is not None}
    return Call("POST", "/v1/experiments", body)


def experiment_rows_call(
    experiment_id: str, rows: Sequence[Mapping[str, Any]], *, interrupted: bool
) -> Call:
    body = {"rows": [dict(r) for r in rows], "interrupted": interrupted}
    return Call("POST", f"/v1/experiments/{seg(experiment_id)}/rows", body)


def check(response: httpx.Response) -> httpx.Response:
    """``response`` if it succeeded; else the ``PonderAPIError`` its body describes."""
    if response.status_code >= 400:
        raise PonderAPIError.from_response(response)
    return response


def parse(model: type[M], response: httpx.Response) -> M:
    return model.model_validate_json(check(response).content)


def parse_list(model: type[M], response: httpx.Response) -> list[M]:
    return TypeAdapter(list[model]).validate_json(check(response).content)  # type: ignore[valid-type]


def reconnectable(exc: PonderAPIError) -> bool:
    """Overload (429) or an outage (5xx) answered a reconnection: try again later. Any
    other error (404: no such job for this key) is final."""
    return exc.status == 429 or exc.status >= 500


WAIT_STEP_S = 20.0
"""One long poll's wait (``GET /v1/jobs/{id}?wait=``): under the server's 60 s cap and
the shortest idle timeouts of the proxies commonly in between (30 s)."""
WAIT_READ_SLACK_S = 10.0
"""How much longer than its wait a long poll may take to answer before it is dead."""
WAIT_RETRY_S = 1.0
"""The pause before a long poll follows one that failed (overload, outage, no route)."""


@dataclass
class LongPoll:
    """``wait()``'s decisions, without I/O: the next long poll's request, and after each
    answer or failure the job (final) or how long to pause before the next one. Raises
    ``TimeoutError`` at the deadline and the last error after ``max_failures`` in a row."""

    job_id: str
    deadline: float | None
    max_failures: int
    failures: int = 0
    _step: float = 0.0
    _sent: float = 0.0

    def request(self, client_timeout: httpx.Timeout) -> dict[str, Any]:
        """The next poll's query and timeout, for ``httpx.Client.get(url, **...)``."""
        self._step = self._remaining(WAIT_STEP_S)
        self._sent = time.monotonic()
        timeout = httpx.Timeout(client_timeout.connect, read=self._step + WAIT_READ_SLACK_S,
                                write=client_timeout.write, pool=client_timeout.pool)  # fmt: skip
        return {"params": {"wait": round(self._step, 3)}, "timeout": timeout}

    def answered(self, response: httpx.Response) -> tuple[JobOut | None, float]:
        """The final job, or None and the pause before the next poll."""
        try:
            job = parse(JobOut, response)
        except PonderAPIError as exc:
            if not reconnectable(exc):
                raise
            return None, self.failed(exc, exc.retry_after)
        if job.done:
            return job, 0.0
        self.failures = 0
        # A server older than the long poll answers a running job at once: do not spin.
        early = time.monotonic() - self._sent < self._step / 2
        return None, self._remaining(0.5) if early else 0.0

    def failed(self, error: Exception, pause: float | None = None) -> float:
        """The pause after a poll that failed (overload, outage, no route)."""
        self.failures += 1
        if self.failures > self.max_failures:
            raise error
        return self._remaining(WAIT_RETRY_S if pause is None else pause)

    def _remaining(self, at_most: float) -> float:
        remaining = None if self.deadline is None else self.deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise TimeoutError(f"job {self.job_id} is not final after the wait's timeout")
        return at_most if remaining is None else max(min(at_most, remaining), 0.001)


def stream_timeout(client_timeout: httpx.Timeout) -> httpx.Timeout:
    return httpx.Timeout(client_timeout.connect, read=STREAM_READ_TIMEOUT_S,
                         write=client_timeout.write, pool=client_timeout.pool)  # fmt: skip
