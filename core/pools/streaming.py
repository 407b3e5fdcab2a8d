"""Streamed model calls: text deltas as the server decodes them, stoppable at any point.

For strategies that act on a generation while it runs (First Finish Search cancels the
slower samples; Solve-Detect-Verify stops the solver once a verified answer appears).
``PoolStream`` is the streamed body of the pool's one attempt loop (``attempts.py``):
retries and failover happen only before the first delta reaches the caller; after it, a
broken stream or an invalid chunk is an error, not something to repeat silently.

Closing the iterator early (``break``, an exception, task cancellation) closes the HTTP
response, which vLLM and llama.cpp's server take as an abort of the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import httpx

from core.pools import wire
from core.pools.attempts import Attempt, Call, Dispatcher, Fault
from strategies.protocol import ModelRequest, Usage

_T = TypeVar("_T")


@dataclass
class StreamDelta:
    text: str
    finish_reason: str | None = None
    reasoning: str = ""
    """Reasoning text of this chunk (``delta.reasoning_content``), apart from ``text``."""


class PoolStream:
    """One streamed call. Iterate once for deltas; then read what the server reported.

    ``usage`` is the server's count when it sent one (``stream_options.include_usage``),
    else ``None`` — the caller then counts the deltas it received.

    The call's deadline (``PoolClient.stream(timeout_s=...)``) bounds each step — waiting
    for a slot, the response headers, the next line — and the consumer's own time between
    deltas: once it has passed, the next step raises ``ModelTimeout`` and closes the
    response. ``deltas``, ``endpoint`` and ``attempts`` then describe the part received.
    """

    def __init__(self, dispatcher: Dispatcher, request: ModelRequest, call: Call) -> None:
        if request.n != 1:
            raise ValueError("a streamed call has n == 1; fan out several streams instead")
        self._dispatcher = dispatcher
        self._call = call
        self.request = request
        self.attempts: list[Attempt] = call.attempts
        self.endpoint: str | None = None
        self.model: str | None = None
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.deltas = 0
        self.reasoning = ""
        """The reasoning text received (vLLM's reasoning parser, llama.cpp)."""
        self.reasoning_deltas = 0
        self.latency_ms = 0.0
        self._prefill = ""

    def _echoed_prefill(self) -> str:
        # llama.cpp echoes a continued assistant message before the continuation.
        request, settings = self.request, self._dispatcher.settings
        if settings.kind != "llamacpp" or not request.continue_final_message:
            return ""
        last = (request.messages or [{}])[-1]
        return last.get("content", "") if last.get("role") == "assistant" else ""

    async def __aiter__(self) -> AsyncGenerator[StreamDelta, None]:
        d = self._dispatcher
        path, body = wire.build_body(self.request, d.settings)
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        chat = self.request.messages is not None
        started = time.perf_counter()
        try:
            async for attempt in d.attempts(self._call):
                async with attempt:
                    endpoint = attempt.endpoint
                    self._prefill = self._echoed_prefill()  # a retry starts over
                    self.reasoning, self.reasoning_deltas = "", 0
                    await self._step(endpoint.semaphore.acquire)
                    try:
                        attempt.start()
                        sent = _send(d, endpoint.url + path, body)
                        response = await self._step(sent)
                        try:
                            status = attempt.status = response.status_code
                            if status != 200:
                                content = await self._step(response.aread)
                                attempt.reject(status, content, response.headers.get("retry-after"))
                            self.endpoint = endpoint.url
                            # aclosing: a consumer that stops early closes the lines now.
                            lines_ = cast(AsyncGenerator[str, None], response.aiter_lines())
                            async with contextlib.aclosing(lines_) as lines:
                                while (line := await self._step(_next_of(lines))) is not None:
                                    try:
                                        delta = self._parse_line(line, chat)
                                    except ValueError as exc:
                                        raise Fault(f"invalid stream chunk: {exc}") from exc
                                    if delta is None:
                                        continue
                                    attempt.delivered()
                                    if delta.text:
                                        self.deltas += 1
                                    if delta.reasoning:
                                        self.reasoning += delta.reasoning
                                        self.reasoning_deltas += 1
                                    yield delta
                        finally:
                            # Closing the response is how vLLM and llama.cpp learn that
                            # the request is abandoned.
                            await response.aclose()
                    finally:
                        endpoint.semaphore.release()
        finally:
            self.latency_ms = (time.perf_counter() - started) * 1000.0

    async def _step(self, start: Callable[[], Awaitable[_T]]) -> _T:
        """Await one step of the stream within the call's deadline."""
        deadline = self._call.deadline
        if deadline is None:
            return await start()
        d = self._dispatcher
        left = deadline - d.clock()
        if left <= 0:
            raise d.timeout_error(self._call.timeout_s)
        limit = asyncio.timeout(left)
        try:
            async with limit:
                return await start()
        except TimeoutError as exc:
            if not limit.expired():
                raise
            raise d.timeout_error(self._call.timeout_s) from exc

    def _parse_line(self, line: str, chat: bool) -> StreamDelta | None:
        if not line.startswith("data:"):
            return None
        payload = line[5:].strip()
        if not payload or payload == "[DONE]":
            return None
        data = json.loads(payload)  # a ValueError is a Fault of the attempt (see __aiter__)
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        if isinstance(data.get("model"), str):
            self.model = data["model"]
        if data.get("usage"):
            self.usage = wire.parse_usage(data["usage"])
        choices = data.get("choices") or []
        if not choices:
            return None
        choice = choices[0]
        delta = choice.get("delta") or {}
        text = (delta.get("content") if chat else choice.get("text")) or ""
        reasoning = (wire.reasoning_of(delta) if chat else None) or ""
        finish = choice.get("finish_reason")
        if finish:
            self.finish_reason = finish
        if self._prefill and text:
            text = self._strip_prefill(text)
        if not text and not finish and not reasoning:
            return None
        return StreamDelta(text, finish, reasoning)

    def _strip_prefill(self, text: str) -> str:
        # Drop the echoed prefill, which may arrive split over several chunks.
        prefill = self._prefill
        if prefill.startswith(text):
            self._prefill = prefill[len(text) :]
            return ""
        if text.startswith(prefill):
            self._prefill = ""
            return text[len(prefill) :]
        self._prefill = ""  # not an echo after all
        return text


def _send(d: Dispatcher, url: str, body: dict[str, Any]) -> Callable[[], Awaitable[httpx.Response]]:
    """Send the request and read its headers (a step for ``PoolStream._step``)."""

    def step() -> Awaitable[httpx.Response]:
        request = d.http.build_request("POST", url, json=body, headers=d.headers, timeout=d.timeout)
        return d.http.send(request, stream=True)

    return step


def _next_of(lines: AsyncIterator[str]) -> Callable[[], Awaitable[str | None]]:
    """The next line, or None at the end (a step for ``PoolStream._step``)."""

    def step() -> Awaitable[str | None]:
        return anext(lines, None)

    return step
