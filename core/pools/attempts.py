"""The one attempt loop of a pool: every model call, plain or streamed, goes through it.

It owns endpoint choice (least outstanding, ties rotating), backoff with full jitter,
Retry-After, the call's deadline between attempts, the per-endpoint breaker verdict of
each attempt, and the record of every HTTP request. A call's *body* — one POST and its
parsing (``client.py``), or one streamed response (``streaming.py``) — only sends the
request and says what came back; this module decides what that means.

    async for attempt in dispatcher.attempts(call):   # picks, backs off, or raises
        async with attempt:                           # verdict, record, retry or not
            ...one HTTP request: the body...           # a stream yields deltas in here

A loop of attempts rather than a callback ``attempt(endpoint) -> T``: a stream's body
hands deltas to its consumer from inside an attempt, and a callback could only do that
through a second task and a queue (one more hop per delta, and the consumer leaving
early would no longer close the HTTP response at once).

What an attempt's outcome means (one table for both bodies):

    2xx, parsed                      success                          breaker: ok
    429, 500, 502, 503, 504          retry (Retry-After: 429/503)     breaker: fault
    other status                     ModelHTTPError, no retry         breaker: ok (server up)
    connect error, reset, timeout    retry                            breaker: fault
    invalid response or chunk        retry                            breaker: fault
    ...after a delta reached the     ModelError, no retry             breaker: fault
       caller (the last two rows)
    cancelled, deadline, left early  propagates                       breaker: no verdict
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from types import TracebackType

import httpx
from pydantic import BaseModel

from core.errors import ModelError, ModelHTTPError, ModelTimeout, PoolUnavailable
from core.pools import wire
from core.pools.endpoint import Endpoint
from core.settings import PoolSettings

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
"""Statuses another attempt may cure: rate limiting and the server-side faults that are
transient. 501 and 505 are permanent; 408 is left out because no supported server sends
it (both former copies agreed on this set)."""
RETRY_AFTER_STATUS = frozenset({429, 503})
"""Where ``Retry-After`` means "wait, then retry" (RFC 9110 §10.2.3). On other statuses
the header is ignored and the usual jittered backoff applies."""

_OK, _FAULT, _ABANDONED = 0, 1, 2


class Attempt(BaseModel):
    """One HTTP request to one endpoint; the journal stores every one."""

    endpoint: str
    started_at: float
    """Unix epoch seconds."""
    latency_ms: float
    status: int | None
    error: str | None


class Fault(Exception):
    """Raised by a body: this attempt failed in a way another attempt may not.

    ``server_fault``: the failure says the server itself is unwell (503, 429), not only
    that it answered this request badly (500, 502, 504, an unusable body). The breaker
    tells the two apart (``core.pools.endpoint``).
    """

    def __init__(
        self, error: str, retry_after: float | None = None, *, server_fault: bool = False
    ) -> None:
        super().__init__(error)
        self.error = error
        self.retry_after = retry_after
        self.server_fault = server_fault


# Statuses that describe the server's state rather than the request's outcome.
SERVER_STATE_STATUS = frozenset({429, 503})
_call_ids = itertools.count()


class Call:
    """What the attempts of one logical call share (all chunks of a fanned-out ``n``)."""

    __slots__ = ("attempts", "deadline", "limit", "timeout_s")

    def __init__(self, deadline: float | None, timeout_s: float | None) -> None:
        self.deadline = deadline
        self.timeout_s = timeout_s
        self.attempts: list[Attempt] = []
        self.limit: asyncio.Timeout | None = None
        """Set by a body bounding the whole call at once, so that the cancellation its
        expiry causes is recorded as the deadline, not as a cancellation."""


class Dispatcher:
    """A pool's endpoints, and what every request to them shares.

    Args:
        name: the role, used in error messages.
        settings: endpoints, timeouts, retry and breaker parameters.
        http: the HTTP client requests go through.
        sleep, rng, clock: injected so tests control backoff, jitter and breaker time.
    """

    def __init__(
        self,
        name: str,
        settings: PoolSettings,
        http: httpx.AsyncClient,
        *,
        sleep: Callable[[float], Awaitable[None]],
        rng: random.Random,
        clock: Callable[[], float],
    ) -> None:
        self.name = name
        self.settings = settings
        self.http = http
        self.sleep = sleep
        self.rng = rng
        self.clock = clock
        self.endpoints = [
            Endpoint(
                url,
                max_concurrency=settings.max_concurrency,
                failures=settings.breaker_failures,
                reset_s=settings.breaker_reset_s,
            )
            for url in settings.endpoints
        ]
        self._next = 0
        # pool=None: the endpoint semaphores already bound waiting; the deadline covers it.
        self.timeout = httpx.Timeout(
            settings.read_timeout_s, connect=settings.connect_timeout_s, pool=None
        )
        key = settings.api_key.get_secret_value() if settings.api_key else None
        self.headers = {"Authorization": f"Bearer {key}"} if key else None

    def call(self, timeout_s: float | None) -> Call:
        """A new logical call, due ``timeout_s`` from now (None: no deadline)."""
        return Call(None if timeout_s is None else self.clock() + timeout_s, timeout_s)

    def attempts(self, call: Call) -> AttemptLoop:
        return AttemptLoop(self, call)

    def pick(self, faults: dict[Endpoint, int]) -> Endpoint | None:
        """Least outstanding among admitted endpoints, those that failed this call last.

        The scan starts one further along each time, so ties rotate.
        """
        endpoints = self.endpoints
        count = len(endpoints)
        start = self._next
        self._next = start + 1 if start + 1 < count else 0
        now = self.clock()
        best: Endpoint | None = None
        best_key = (0, 0)
        for i in range(count):
            endpoint = endpoints[(start + i) % count]
            if not endpoint.admits(now):
                continue
            key = (faults.get(endpoint, 0), endpoint.outstanding)
            if best is None or key < best_key:
                best, best_key = endpoint, key
        return best

    def backoff(self, retry: int, retry_after: float | None) -> float:
        s = self.settings
        if retry_after is not None:
            return min(retry_after, s.backoff_max_s)
        # Full jitter (AWS architecture blog): spreads retries of concurrent calls.
        return self.rng.uniform(0.0, min(s.backoff_max_s, s.backoff_base_s * 2.0 ** min(retry, 60)))

    def label(self, endpoint: Endpoint) -> str:
        """How errors name an endpoint: by position, never by URL. Job errors reach
        tenants, and the servers' addresses are the operator's (``/v1/pools`` is
        admin-only; logs keep URLs)."""
        return f"endpoint {self.endpoints.index(endpoint) + 1} of {len(self.endpoints)}"

    def label_url(self, url: str | None) -> str | None:
        """``label`` of the endpoint at ``url`` ("endpoint" for a URL not in this pool)."""
        if url is None:
            return None
        return next((self.label(ep) for ep in self.endpoints if ep.url == url), "endpoint")

    def public_attempts(self, attempts: list[Attempt]) -> list[dict[str, object]]:
        """Attempts as a job's error and journal show them: endpoints by label, not URL."""
        labels = {ep.url: self.label(ep) for ep in self.endpoints}
        return [a.model_dump() | {"endpoint": labels.get(a.endpoint, "endpoint")} for a in attempts]

    def all_open_error(self, last: str | None) -> PoolUnavailable:
        now = self.clock()
        refusing = [self.label(ep) for ep in self.endpoints if not ep.admits(now)]
        message = f"pool {self.name!r}: no endpoint available, circuit open for " + ", ".join(
            refusing
        )
        if last is not None:
            message += f"; last: {last}"
        return PoolUnavailable(message, open_endpoints=refusing)

    def timeout_error(self, timeout_s: float | None) -> ModelTimeout:
        return ModelTimeout(
            f"pool {self.name!r}: no answer within the {timeout_s} s deadline",
            timeout_s=timeout_s,
        )


class AttemptLoop:
    """Iterate for one ``Try`` per attempt, until a ``Try`` ends without an error.

    Raises rather than stopping when the call cannot go on: ``PoolUnavailable`` when the
    attempts run out or every circuit is open, ``ModelTimeout`` when the next backoff
    would end past the call's deadline.
    """

    __slots__ = (
        "_dispatcher",
        "_done",
        "_faults",
        "_last",
        "_retry_after",
        "_tries",
        "call",
        "id",
    )

    def __init__(self, dispatcher: Dispatcher, call: Call) -> None:
        self.id = next(_call_ids)
        self._dispatcher = dispatcher
        self.call = call
        self._faults: dict[Endpoint, int] = {}
        self._tries = 0
        self._done = False
        self._last: str | None = None
        self._retry_after: float | None = None

    def __aiter__(self) -> AttemptLoop:
        return self

    async def __anext__(self) -> Try:
        if self._done:
            raise StopAsyncIteration
        d = self._dispatcher
        if self._tries:
            limit = d.settings.max_attempts
            if self._tries >= limit:
                raise PoolUnavailable(
                    f"pool {d.name!r}: all {limit} attempts failed; last: {self._last}",
                    last_error=self._last,
                )
            delay = d.backoff(self._tries - 1, self._retry_after)
            deadline = self.call.deadline
            if deadline is not None and d.clock() + delay >= deadline:
                raise d.timeout_error(self.call.timeout_s)
            if delay > 0:
                await d.sleep(delay)
        endpoint = d.pick(self._faults)
        if endpoint is None:
            raise d.all_open_error(self._last)
        self._tries += 1
        # begin() right after pick(), no await between: the breaker admitted this request.
        return Try(self, endpoint, endpoint.begin(d.clock()))

    def _failed(self, endpoint: Endpoint, error: str, retry_after: float | None) -> None:
        self._faults[endpoint] = self._faults.get(endpoint, 0) + 1
        self._last = f"{self._dispatcher.label(endpoint)}: {error}"
        self._retry_after = retry_after


class Try:
    """One attempt on ``endpoint``; ``async with`` it around the body's one request.

    The body calls ``start()`` once its request is on the way (holding the endpoint's
    slot), ``reject()`` for a non-2xx status, and ``delivered()`` when it hands anything
    to its caller. It raises ``Fault`` for a response it cannot use.
    """

    __slots__ = (
        "_loop",
        "_probe",
        "_started_at",
        "_t0",
        "delivered_any",
        "endpoint",
        "error",
        "status",
    )

    def __init__(self, loop: AttemptLoop, endpoint: Endpoint, probe: bool) -> None:
        self._loop = loop
        self.endpoint = endpoint
        self._probe = probe
        self.status: int | None = None
        self.error: str | None = None
        self.delivered_any = False
        self._t0: float | None = None
        self._started_at = 0.0

    def start(self) -> None:
        self._started_at = time.time()
        self._t0 = time.perf_counter()

    def delivered(self) -> None:
        self.delivered_any = True

    def reject(self, status: int, content: bytes, retry_after: str | None) -> None:
        """Classify a non-2xx answer: always raises (``Fault`` or ``ModelHTTPError``)."""
        self.status = status
        error = f"HTTP {status}: {wire.error_message(content)}"
        if status in RETRYABLE_STATUS:
            wait = wire.retry_after(retry_after) if status in RETRY_AFTER_STATUS else None
            raise Fault(error, wait, server_fault=status in SERVER_STATE_STATUS)
        self.error = error
        dispatcher = self._loop._dispatcher
        where = dispatcher.label(self.endpoint)
        raise ModelHTTPError(
            f"pool {dispatcher.name!r}: {where} rejected the request: {error}",
            endpoint=where,
            upstream_status=status,
        )

    async def __aenter__(self) -> Try:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        loop = self._loop
        d = loop._dispatcher
        endpoint = self.endpoint
        verdict, retry, fatal = _ABANDONED, False, None
        server_fault = True
        if exc is None:
            verdict = _OK
            loop._done = True
        elif isinstance(exc, Fault):
            verdict, self.error = _FAULT, exc.error
            retry, server_fault = True, exc.server_fault
        elif isinstance(exc, ModelHTTPError):
            verdict = _OK  # the server is up; the request was wrong
        elif isinstance(exc, (httpx.UnsupportedProtocol, httpx.LocalProtocolError)):
            self.error = wire.describe(exc)
            fatal = ModelError(f"pool {d.name!r}: {d.label(endpoint)}: {self.error}")
        elif isinstance(exc, httpx.RequestError):
            # Connect errors, timeouts, "Server disconnected", resets.
            verdict, self.error = _FAULT, wire.describe(exc)
            retry = True
        elif isinstance(exc, ModelTimeout) or (
            isinstance(exc, asyncio.CancelledError)
            and loop.call.limit is not None
            and loop.call.limit.expired()
        ):
            self.error = "deadline"
        elif isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
            self.error = "cancelled"
        else:
            self.error = f"{type(exc).__name__}: {exc}"
        if retry and self.delivered_any:
            # The caller already acted on part of this answer: a second attempt would
            # hand it the beginning again. Before that, nothing is lost by retrying.
            retry = False
            fatal = ModelError(f"pool {d.name!r}: {d.label(endpoint)}: stream broke: {self.error}")
        if verdict == _OK:
            endpoint.succeeded(self._probe)
        elif verdict == _FAULT:
            endpoint.failed(d.clock(), self._probe, request=loop.id, server_fault=server_fault)
        else:
            endpoint.abandoned(self._probe)
        if self._t0 is not None:
            loop.call.attempts.append(
                Attempt(
                    endpoint=endpoint.url,
                    started_at=self._started_at,
                    latency_ms=(time.perf_counter() - self._t0) * 1000.0,
                    status=self.status,
                    error=self.error,
                )
            )
        if fatal is not None:
            raise fatal from exc
        if retry:
            retry_after = exc.retry_after if isinstance(exc, Fault) else None
            loop._failed(endpoint, self.error or "", retry_after)
            return True
        return False
