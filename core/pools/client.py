"""PoolClient: one model role's servers behind a single ``generate`` call.

This is the only place that retries model calls (STYLE: one owner per retry kind).
It balances by least outstanding requests, fails over between endpoints with
backoff, trips a per-endpoint circuit breaker, fans ``n`` out into several requests
where a server cannot sample it natively, and records every HTTP attempt.

    generate ─▶ plan (one request, or chunks) ─▶ _call per chunk (retry loop)
                                                    └▶ _attempt (one HTTP request)
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpx
from pydantic import BaseModel

from core.errors import ModelError, ModelHTTPError, ModelTimeout, PoolUnavailable
from core.pools import wire
from core.pools.endpoint import Endpoint, EndpointHealth, EndpointState, probe_health
from core.pools.streaming import PoolStream
from core.settings import PoolSettings
from strategies.protocol import Choice, ModelRequest, Usage

_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
_RETRY_AFTER_STATUS = frozenset({429, 503})
# Below the 5 s idle timeout of uvicorn (vLLM) and cpp-httplib (llama.cpp), so the
# client drops an idle connection before the server does and never reuses a
# half-closed one ("Server disconnected" on the next request).
_KEEPALIVE_EXPIRY_S = 4.0

_OK, _FAULT, _ABANDONED = 0, 1, 2


class Attempt(BaseModel):
    """One HTTP request to one endpoint; the journal stores every one."""

    endpoint: str
    started_at: float
    """Unix epoch seconds."""
    latency_ms: float
    status: int | None
    error: str | None


class PoolResult(BaseModel):
    model: str
    choices: list[Choice]
    """Indexed 0..n-1; fanned-out chunks in chunk order."""
    usage: Usage
    endpoint: str | None
    """The endpoint that answered (the first chunk's, for fan-out)."""
    attempts: list[Attempt]
    emulated_n: bool
    """True when ``n`` was fanned out into several requests."""
    latency_ms: float


def new_http_client(pools: Iterable[PoolSettings]) -> httpx.AsyncClient:
    """An HTTP client sized so that only the per-endpoint semaphores ever queue."""
    connections = sum(p.max_concurrency * len(p.endpoints) for p in pools)
    limits = httpx.Limits(
        max_connections=connections,
        max_keepalive_connections=connections,
        keepalive_expiry=_KEEPALIVE_EXPIRY_S,
    )
    return httpx.AsyncClient(limits=limits)


class _Fault(Exception):
    """An attempt failed in a way another attempt may not (internal to the retry loop)."""

    def __init__(self, error: str, retry_after: float | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.retry_after = retry_after


class _Call:
    """What the attempts of one ``generate`` share."""

    __slots__ = ("attempts", "chat", "deadline", "path", "timeout_s")

    def __init__(self, path: str, chat: bool, deadline: float | None, timeout_s: float | None):
        self.path = path
        self.chat = chat
        self.deadline = deadline
        self.timeout_s = timeout_s
        self.attempts: list[Attempt] = []


_Answer = tuple[Endpoint, str | None, list[Choice], Usage]


class PoolClient:
    """Sends model requests to one pool of OpenAI-compatible servers.

    Args:
        name: the role, used in error messages.
        settings: endpoints, server kind, timeouts, retry and breaker parameters.
        http: a shared client; if omitted one is created (and closed by ``aclose``).
        sleep, rng, clock: injected so tests control backoff, jitter and breaker time.

    Example:
        >>> pool = PoolClient("small", PoolSettings(endpoints=[url], model="qwen"))
        >>> result = await pool.generate(ModelRequest(prompt="2+2=", max_tokens=4))
        >>> result.choices[0].text
    """

    def __init__(
        self,
        name: str,
        settings: PoolSettings,
        http: httpx.AsyncClient | None = None,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.settings = settings
        self._owns_http = http is None
        self._http = http if http is not None else new_http_client([settings])
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._clock = clock
        self._endpoints = [
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
        self._timeout = httpx.Timeout(
            settings.read_timeout_s, connect=settings.connect_timeout_s, pool=None
        )
        key = settings.api_key.get_secret_value() if settings.api_key else None
        self._headers = {"Authorization": f"Bearer {key}"} if key else None

    async def generate(
        self, request: ModelRequest, *, timeout_s: float | None = None
    ) -> PoolResult:
        """Run ``request`` on the pool, retrying and failing over as needed.

        Args:
            request: the logical call.
            timeout_s: bound on the whole call, attempts and backoff included.

        Raises:
            ModelHTTPError: a server rejected the request (a 4xx other than 429).
            PoolUnavailable: every circuit is open, or all attempts failed.
            ModelTimeout: ``timeout_s`` passed first.
            Each carries ``details["attempts"]`` (``Attempt`` dumps) and ``details["pool"]``.
        """
        started = time.perf_counter()
        path, body = wire.build_body(request, self.settings)
        deadline = None if timeout_s is None else self._clock() + timeout_s
        call = _Call(path, request.messages is not None, deadline, timeout_s)
        try:
            if timeout_s is None:
                result = await self._run(call, body, request)
            else:
                limit = asyncio.timeout(timeout_s)
                try:
                    async with limit:
                        result = await self._run(call, body, request)
                except TimeoutError as exc:
                    if not limit.expired():
                        raise
                    raise self._timeout_error(timeout_s) from exc
        except ModelError as exc:
            exc.details["pool"] = self.name
            exc.details["attempts"] = [a.model_dump() for a in call.attempts]
            raise
        result.latency_ms = (time.perf_counter() - started) * 1000.0
        return result

    def stream(self, request: ModelRequest) -> PoolStream:
        """A streamed call (``n == 1``): iterate it for text deltas; see ``PoolStream``."""
        return PoolStream(self, request)

    async def health(self) -> list[EndpointHealth]:
        """Probe every endpoint concurrently (``GET /health``, else ``GET /v1/models``).

        Read-only: probes neither count as requests nor move the breakers.
        """
        timeout = httpx.Timeout(self.settings.connect_timeout_s)
        probes = (
            probe_health(self._http, ep, self._headers, timeout, self._clock)
            for ep in self._endpoints
        )
        return list(await asyncio.gather(*probes))

    def snapshot(self) -> list[EndpointState]:
        now = self._clock()
        return [ep.snapshot(now) for ep in self._endpoints]

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    # -- planning and fan-out ------------------------------------------------

    def _chunks(self, request: ModelRequest) -> list[tuple[int, int]] | None:
        """``(first_index, n)`` per request when ``n`` must fan out, else None."""
        n = request.n
        if n == 1:
            return None
        s = self.settings
        native = s.supports_native_n() and not (
            request.seed is not None and s.seeded_n_is_identical()
        )
        if native and (s.max_n is None or n <= s.max_n):
            return None
        size = s.max_n if native and s.max_n else 1
        return [(first, min(size, n - first)) for first in range(0, n, size)]

    async def _run(self, call: _Call, body: dict[str, Any], request: ModelRequest) -> PoolResult:
        chunks = self._chunks(request)
        if chunks is None:
            endpoint, model, choices, usage = await self._call(call, body, 0)
            return PoolResult.model_construct(
                model=model or self.settings.model,
                choices=wire.without_echoed_prefill(choices, request, self.settings),
                usage=usage,
                endpoint=endpoint.url,
                attempts=call.attempts,
                emulated_n=False,
                latency_ms=0.0,
            )
        answers = await self._fan_out(call, body, chunks)
        first = answers[0]
        return PoolResult.model_construct(
            model=first[1] or self.settings.model,
            choices=wire.without_echoed_prefill(
                [c for a in answers for c in a[2]], request, self.settings
            ),
            usage=Usage(
                prompt_tokens=sum(a[3].prompt_tokens for a in answers),
                completion_tokens=sum(a[3].completion_tokens for a in answers),
            ),
            endpoint=first[0].url,
            attempts=call.attempts,
            emulated_n=True,
            latency_ms=0.0,
        )

    async def _fan_out(
        self, call: _Call, body: dict[str, Any], chunks: list[tuple[int, int]]
    ) -> list[_Answer]:
        tasks = [
            asyncio.create_task(self._call(call, wire.chunk_body(body, size, first), first))
            for first, size in chunks
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            # On the first failure, or if we are cancelled, stop the other chunks
            # and wait for them so their attempts are recorded and counts restored.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:
            if not task.cancelled() and (exc := task.exception()) is not None:
                raise exc
        return [task.result() for task in tasks]

    # -- the retry loop -------------------------------------------------------

    async def _call(self, call: _Call, body: dict[str, Any], first_index: int) -> _Answer:
        s = self.settings
        faults: dict[Endpoint, int] = {}
        fault: _Fault | None = None
        for attempt in range(s.max_attempts):
            endpoint = self._pick(faults)
            if endpoint is None:
                raise self._all_open_error(fault)
            try:
                return await self._attempt(call, endpoint, body, first_index)
            except _Fault as exc:
                fault = exc
                faults[endpoint] = faults.get(endpoint, 0) + 1
            if attempt + 1 < s.max_attempts:
                delay = self._backoff(attempt, fault.retry_after)
                if call.deadline is not None and self._clock() + delay >= call.deadline:
                    raise self._timeout_error(call.timeout_s)
                if delay > 0:
                    await self._sleep(delay)
        last = fault.error if fault else "no attempt made"
        raise PoolUnavailable(
            f"pool {self.name!r}: all {s.max_attempts} attempts failed; last: {last}",
            last_error=last,
        )

    def _pick(self, faults: dict[Endpoint, int]) -> Endpoint | None:
        """Least outstanding among admitted endpoints, those that failed this call last.

        The scan starts one further along each time, so ties rotate.
        """
        endpoints = self._endpoints
        count = len(endpoints)
        start = self._next
        self._next = start + 1 if start + 1 < count else 0
        now = self._clock()
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

    def _backoff(self, retry: int, retry_after: float | None) -> float:
        s = self.settings
        if retry_after is not None:
            return min(retry_after, s.backoff_max_s)
        # Full jitter (AWS architecture blog): spreads retries of concurrent calls.
        return self._rng.uniform(
            0.0, min(s.backoff_max_s, s.backoff_base_s * 2.0 ** min(retry, 60))
        )

    async def _attempt(
        self, call: _Call, endpoint: Endpoint, body: dict[str, Any], first_index: int
    ) -> _Answer:
        probe = endpoint.begin(self._clock())
        verdict = _ABANDONED
        status: int | None = None
        error: str | None = None
        started_at = 0.0
        t0: float | None = None
        try:
            async with endpoint.semaphore:
                started_at = time.time()
                t0 = time.perf_counter()
                try:
                    response = await self._http.post(
                        endpoint.url + call.path,
                        json=body,
                        headers=self._headers,
                        timeout=self._timeout,
                    )
                except (httpx.UnsupportedProtocol, httpx.LocalProtocolError) as exc:
                    error = wire.describe(exc)
                    raise ModelError(f"pool {self.name!r}: {endpoint.url}: {error}") from exc
                except httpx.RequestError as exc:
                    # Connect errors, timeouts, "Server disconnected", resets.
                    verdict, error = _FAULT, wire.describe(exc)
                    raise _Fault(f"{endpoint.url}: {error}") from exc
            status = response.status_code
            if 200 <= status < 300:
                try:
                    model, choices, usage = wire.parse_response(
                        json.loads(response.content), chat=call.chat, first_index=first_index
                    )
                except ValueError as exc:  # also WireError and invalid JSON
                    verdict, error = _FAULT, f"invalid response: {exc}"
                    raise _Fault(f"{endpoint.url}: {error}") from exc
                verdict = _OK
                return endpoint, model, choices, usage
            error = f"HTTP {status}: {wire.error_message(response.content)}"
            if status in _RETRYABLE_STATUS:
                verdict = _FAULT
                retry_after = (
                    wire.retry_after(response.headers.get("retry-after"))
                    if status in _RETRY_AFTER_STATUS
                    else None
                )
                raise _Fault(f"{endpoint.url}: {error}", retry_after)
            verdict = _OK  # the server is up; the request was wrong
            raise ModelHTTPError(
                f"pool {self.name!r}: {endpoint.url} rejected the request: {error}",
                endpoint=endpoint.url,
                upstream_status=status,
            )
        except asyncio.CancelledError:
            error = "cancelled"
            raise
        finally:
            if verdict == _OK:
                endpoint.succeeded(probe)
            elif verdict == _FAULT:
                endpoint.failed(self._clock(), probe)
            else:
                endpoint.abandoned(probe)
            if t0 is not None:
                call.attempts.append(
                    Attempt(
                        endpoint=endpoint.url,
                        started_at=started_at,
                        latency_ms=(time.perf_counter() - t0) * 1000.0,
                        status=status,
                        error=error,
                    )
                )

    # -- errors -----------------------------------------------------------------

    def _all_open_error(self, fault: _Fault | None) -> PoolUnavailable:
        now = self._clock()
        refusing = [ep.url for ep in self._endpoints if not ep.admits(now)]
        message = f"pool {self.name!r}: no endpoint available, circuit open for " + ", ".join(
            refusing
        )
        if fault is not None:
            message += f"; last: {fault.error}"
        return PoolUnavailable(message, open_endpoints=refusing)

    def _timeout_error(self, timeout_s: float | None) -> ModelTimeout:
        return ModelTimeout(
            f"pool {self.name!r}: no answer within the {timeout_s} s deadline",
            timeout_s=timeout_s,
        )
