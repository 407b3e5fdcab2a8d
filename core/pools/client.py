"""PoolClient: one model role's servers behind a ``generate`` and a ``stream`` call.

It plans a call (one request, or chunks where ``n`` must fan out) and gives each request
to the pool's one attempt loop (``attempts.py``), which alone retries model calls (STYLE:
one owner per retry kind), balances, fails over, trips the breakers and records every
HTTP attempt. A plain call and a stream are two bodies of that loop:

    generate ─▶ plan ─▶ _call per chunk: async for attempt in loop: POST, parse
    stream   ─▶ PoolStream (streaming.py): async for attempt in loop: POST, yield deltas
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

from core.errors import ModelError
from core.pools import wire
from core.pools.attempts import Attempt, Call, Dispatcher, Fault
from core.pools.endpoint import (
    BreakerListener,
    Endpoint,
    EndpointHealth,
    EndpointState,
    probe_health,
)
from core.pools.streaming import PoolStream
from core.pools.tool_text import with_calls_from_text
from core.settings import PoolSettings
from strategies.protocol import Choice, ModelRequest, Usage

__all__ = ["Attempt", "PoolClient", "PoolResult", "new_http_client"]

# Below the 5 s idle timeout of uvicorn (vLLM) and cpp-httplib (llama.cpp), so the
# client drops an idle connection before the server does and never reuses a
# half-closed one ("Server disconnected" on the next request).
_KEEPALIVE_EXPIRY_S = 4.0


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
        self._dispatcher = Dispatcher(
            name,
            settings,
            self._http,
            sleep=sleep,
            rng=rng if rng is not None else random.Random(),
            clock=clock,
        )

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
        call = self._dispatcher.call(timeout_s)
        try:
            if timeout_s is None:
                result = await self._run(call, path, body, request)
            else:
                limit = call.limit = asyncio.timeout(timeout_s)
                try:
                    async with limit:
                        result = await self._run(call, path, body, request)
                except TimeoutError as exc:
                    if not limit.expired():
                        raise
                    raise self._dispatcher.timeout_error(timeout_s) from exc
        except ModelError as exc:
            exc.details["pool"] = self.name
            exc.details["attempts"] = self._dispatcher.public_attempts(call.attempts)
            raise
        result.latency_ms = (time.perf_counter() - started) * 1000.0
        return result

    def stream(self, request: ModelRequest, *, timeout_s: float | None = None) -> PoolStream:
        """A streamed call (``n == 1``): iterate it for text deltas; see ``PoolStream``.

        ``timeout_s`` bounds the whole stream from now — attempts, backoff, every delta,
        and the time the consumer spends between deltas.
        """
        return PoolStream(self._dispatcher, request, self._dispatcher.call(timeout_s))

    async def health(self) -> list[EndpointHealth]:
        """Probe every endpoint concurrently (``GET /health``, else ``GET /v1/models``).

        Read-only: probes neither count as requests nor move the breakers.
        """
        d = self._dispatcher
        timeout = httpx.Timeout(self.settings.connect_timeout_s)
        probes = (probe_health(self._http, ep, d.headers, timeout, d.clock) for ep in d.endpoints)
        return list(await asyncio.gather(*probes))

    def add_breaker_listener(self, listener: BreakerListener) -> None:
        """``listener(url, state, reason)`` on every opening and closing of this pool's
        breakers (called on the event loop; it must not block)."""
        for endpoint in self._dispatcher.endpoints:
            endpoint.listeners.append(listener)

    def public_endpoint(self, url: str | None) -> str | None:
        """How records a tenant can read (journal, trace) name the endpoint at ``url``:
        by position, ``"endpoint 2 of 3"``, never by URL (``/v1/pools`` is admin-only)."""
        return self._dispatcher.label_url(url)

    def public_attempts(self, attempts: list[Attempt]) -> list[dict[str, object]]:
        """``attempts`` as records a tenant can read keep them: endpoints by position."""
        return self._dispatcher.public_attempts(attempts)

    def snapshot(self) -> list[EndpointState]:
        now = self._dispatcher.clock()
        return [ep.snapshot(now) for ep in self._dispatcher.endpoints]

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

    async def _run(
        self, call: Call, path: str, body: dict[str, Any], request: ModelRequest
    ) -> PoolResult:
        chat = request.messages is not None
        chunks = self._chunks(request)
        if chunks is None:
            endpoint, model, choices, usage = await self._call(call, path, chat, body, 0)
            return PoolResult.model_construct(
                model=model or self.settings.model,
                choices=_normalized(choices, request, self.settings),
                usage=usage,
                endpoint=endpoint.url,
                attempts=call.attempts,
                emulated_n=False,
                latency_ms=0.0,
            )
        answers = await self._fan_out(call, path, chat, body, chunks)
        first = answers[0]
        return PoolResult.model_construct(
            model=first[1] or self.settings.model,
            choices=_normalized([c for a in answers for c in a[2]], request, self.settings),
            usage=Usage(
                prompt_tokens=sum(a[3].prompt_tokens for a in answers),
                completion_tokens=sum(a[3].completion_tokens for a in answers),
                reasoning_tokens=sum(a[3].reasoning_tokens for a in answers),
                reasoning_tokens_estimated=any(a[3].reasoning_tokens_estimated for a in answers),
            ),
            endpoint=first[0].url,
            attempts=call.attempts,
            emulated_n=True,
            latency_ms=0.0,
        )

    async def _fan_out(
        self,
        call: Call,
        path: str,
        chat: bool,
        body: dict[str, Any],
        chunks: list[tuple[int, int]],
    ) -> list[_Answer]:
        tasks = [
            asyncio.create_task(
                self._call(call, path, chat, wire.chunk_body(body, size, first), first)
            )
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

    # -- the plain body of the attempt loop ------------------------------------

    async def _call(
        self, call: Call, path: str, chat: bool, body: dict[str, Any], first_index: int
    ) -> _Answer:
        d = self._dispatcher
        async for attempt in d.attempts(call):
            async with attempt:
                endpoint = attempt.endpoint
                async with endpoint.semaphore:
                    attempt.start()
                    response = await d.http.post(
                        endpoint.url + path, json=body, headers=d.headers, timeout=d.timeout
                    )
                status = attempt.status = response.status_code
                if not 200 <= status < 300:
                    attempt.reject(status, response.content, response.headers.get("retry-after"))
                try:
                    model, choices, usage = wire.parse_response(
                        json.loads(response.content), chat=chat, first_index=first_index
                    )
                except ValueError as exc:  # also WireError and invalid JSON
                    raise Fault(f"invalid response: {exc}") from exc
                return endpoint, model, choices, usage
        raise AssertionError("the attempt loop ends by raising unless an attempt returned")


def _normalized(
    choices: list[Choice], request: ModelRequest, settings: PoolSettings
) -> list[Choice]:
    """The same choices from every server kind: without llama.cpp's echoed prefill,
    and with calls left in the text read back as ``tool_calls``."""
    return with_calls_from_text(wire.without_echoed_prefill(choices, request, settings), request)
