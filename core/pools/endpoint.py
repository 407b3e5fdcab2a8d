"""Per-endpoint state: outstanding requests, a concurrency cap and a circuit breaker.

The breaker counts *endpoint faults* only — connection errors, disconnects, read
timeouts, 429 and 5xx. A 4xx answer means the server is up and the request was
wrong, so it counts as a success for the breaker.

The breaker judges servers, not prompts. A fault the server *answered* (500, 502, 504,
an unusable body) may be one request's doing — a prompt that crashes the server's
template, say — and that request's own retries repeat it. So answered faults open the
circuit only once they come from at least two different requests (or one, when
``breaker_failures`` is 1). Faults that say the server itself is unwell (unreachable,
reset, timed out, 429, 503) count whoever sent them. Opening and closing are logged as
warnings.

    closed ──(breaker_failures consecutive faults)──▶ open
    open ──(breaker_reset_s elapsed)──▶ half_open: one probe request admitted
    half_open ──probe succeeds──▶ closed      half_open ──probe fails──▶ open
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Literal

import httpx
from pydantic import BaseModel

from core.pools import wire

log = logging.getLogger(__name__)

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


BreakerListener = Callable[[str, BreakerState, str], None]
"""Called with (url, new state, reason) when a breaker opens or closes."""


class Endpoint:
    """One server of a pool. Mutated only from the event loop, so no locks."""

    __slots__ = (
        "_failing_requests",
        "_failures_to_open",
        "_reset_s",
        "_server_fault_seen",
        "consecutive_failures",
        "listeners",
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
        # Since the last success: which requests had answered faults, and whether any
        # fault said the server itself is unwell.
        self._failing_requests: set[int] = set()
        self._server_fault_seen = False
        # Told of every opening and closing (workers report them: core.breaker_reports).
        self.listeners: list[BreakerListener] = []

    def _tell(self, state: BreakerState, reason: str) -> None:
        for listener in self.listeners:
            try:
                listener(self.url, state, reason)
            except Exception:  # a report must never break a model call
                log.exception("breaker listener failed")

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
        self._failing_requests.clear()
        self._server_fault_seen = False
        if self.state != "closed":
            log.warning("endpoint %s: circuit closed (a request succeeded)", self.url)
            self.state = "closed"
            self._tell("closed", "a request succeeded")
        self.state = "closed"
        if probe:
            self.probing = False

    def failed(self, now: float, probe: bool, *, request: int, server_fault: bool) -> None:
        """Record an endpoint fault of attempt-owner ``request`` (any id unique per call).

        ``server_fault``: the fault says the server itself is unwell (see the module
        docstring), rather than that it answered this request badly.
        """
        self.outstanding -= 1
        self.consecutive_failures += 1
        self.total_failures += 1
        if server_fault:
            self._server_fault_seen = True
        else:
            self._failing_requests.add(request)
        if probe:
            self.probing = False
        if self.state == "open":
            return
        judged = self._server_fault_seen or len(self._failing_requests) >= min(
            2, self._failures_to_open
        )
        if self.state == "half_open" or (
            judged and self.consecutive_failures >= self._failures_to_open
        ):
            self.opened_at = now
            self.state = "open"
            reason = (
                f"{self.consecutive_failures} consecutive faults ("
                + (
                    "server unreachable or overloaded"
                    if self._server_fault_seen
                    else f"answered faults from {len(self._failing_requests)} requests"
                )
                + ")"
            )
            log.warning(
                "endpoint %s: circuit opened after %s; requests go elsewhere for %.0f s",
                self.url,
                reason,
                self._reset_s,
            )
            self._tell("open", reason)

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
