"""Per-endpoint state: outstanding requests, a concurrency cap and a circuit breaker.

The breaker counts *endpoint faults* only — connection errors, disconnects, read
timeouts, 429 and 5xx. A 4xx answer means the server is up and the request was
wrong, so it counts as a success for the breaker.

    closed ──(breaker_failures consecutive faults)──▶ open
    open ──(breaker_reset_s elapsed)──▶ half_open: one probe request admitted
    half_open ──probe succeeds──▶ closed      half_open ──probe fails──▶ open
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Literal

import httpx
from pydantic import BaseModel

from core.pools import wire

BreakerState = Literal["closed", "open", "half_open"]
# Statuses saying "no /health route here": probe /v1/models instead.
_NO_HEALTH_ROUTE = frozenset({404, 405, 501})


class EndpointState(BaseModel):
    """A point-in-time view of one endpoint, for status pages and tests."""

    url: str
    outstanding: int
    """Requests assigned to the endpoint: in flight plus waiting for a slot."""
    breaker: BreakerState
    consecutive_failures: int
    total_requests: int
    """Attempts sent to the endpoint."""
    total_failures: int
    """Attempts that ended in an endpoint fault (see the module docstring)."""


class EndpointHealth(BaseModel):
    """The outcome of one health probe."""

    url: str
    ok: bool
    status: int | None
    probe: str
    """The path that answered: ``/health``, or ``/v1/models`` where there is none."""
    latency_ms: float
    error: str | None = None
    breaker: BreakerState


class Endpoint:
    """One server of a pool. Mutated only from the event loop, so no locks."""

    __slots__ = (
        "_failures_to_open",
        "_reset_s",
        "consecutive_failures",
        "opened_at",
        "outstanding",
        "probing",
        "semaphore",
        "state",
        "total_failures",
        "total_requests",
        "url",
    )

    def __init__(self, url: str, *, max_concurrency: int, failures: int, reset_s: float) -> None:
        self.url = url
        self.semaphore = asyncio.Semaphore(max_concurrency)
        self._failures_to_open = failures
        self._reset_s = reset_s
        self.outstanding = 0
        self.state: BreakerState = "closed"
        self.opened_at = 0.0
        self.probing = False
        self.consecutive_failures = 0
        self.total_requests = 0
        self.total_failures = 0

    def admits(self, now: float) -> bool:
        """Whether the breaker lets a request through at ``now`` (no state change)."""
        if self.state == "closed":
            return True
        if self.state == "open":
            return now - self.opened_at >= self._reset_s
        return not self.probing

    def begin(self, now: float) -> bool:
        """Assign a request to this endpoint; return True if it is the half-open probe.

        Call only after :meth:`admits` returned True, with no ``await`` in between.
        """
        self.outstanding += 1
        self.total_requests += 1
        if self.state == "closed":
            return False
        self.state = "half_open"
        self.probing = True
        return True

    def succeeded(self, probe: bool) -> None:
        self.outstanding -= 1
        self.consecutive_failures = 0
        self.state = "closed"
        if probe:
            self.probing = False

    def failed(self, now: float, probe: bool) -> None:
        self.outstanding -= 1
        self.consecutive_failures += 1
        self.total_failures += 1
        if probe:
            self.probing = False
        if self.state == "half_open" or self.consecutive_failures >= self._failures_to_open:
            if self.state != "open":
                self.opened_at = now
            self.state = "open"

    def abandoned(self, probe: bool) -> None:
        """The request was cancelled: no verdict on the endpoint; free the probe slot."""
        self.outstanding -= 1
        if probe:
            self.probing = False

    def breaker_at(self, now: float) -> BreakerState:
        if self.state == "open" and now - self.opened_at >= self._reset_s:
            return "half_open"
        return self.state

    def snapshot(self, now: float) -> EndpointState:
        return EndpointState(
            url=self.url,
            outstanding=self.outstanding,
            breaker=self.breaker_at(now),
            consecutive_failures=self.consecutive_failures,
            total_requests=self.total_requests,
            total_failures=self.total_failures,
        )


async def probe_health(
    http: httpx.AsyncClient,
    endpoint: Endpoint,
    headers: dict[str, str] | None,
    timeout: httpx.Timeout,
    clock: Callable[[], float],
) -> EndpointHealth:
    """``GET /health`` (vLLM, llama.cpp), else ``GET /v1/models`` (OpenAI and others).

    Read-only: a probe is not a request and does not move the breaker.
    """
    path = "/health"
    status: int | None = None
    error: str | None = None
    t0 = time.perf_counter()
    try:
        response = await http.get(endpoint.url + path, headers=headers, timeout=timeout)
        if response.status_code in _NO_HEALTH_ROUTE:
            path = "/v1/models"
            response = await http.get(endpoint.url + path, headers=headers, timeout=timeout)
        status = response.status_code
        if not 200 <= status < 300:
            error = f"HTTP {status}: {wire.error_message(response.content)}"
    except httpx.HTTPError as exc:
        error = wire.describe(exc)
    return EndpointHealth(
        url=endpoint.url,
        ok=error is None,
        status=status,
        probe=path,
        latency_ms=(time.perf_counter() - t0) * 1000.0,
        error=error,
        breaker=endpoint.breaker_at(clock()),
    )
