"""Streamed model calls: text deltas as the server decodes them, stoppable at any point.

For strategies that act on a generation while it runs (First Finish Search cancels the
slower samples; Solve-Detect-Verify stops the solver once a verified answer appears).
Retries and failover happen only before the first byte of the answer: once text has
reached the caller, a broken stream is an error, not something to repeat silently.

Closing the iterator early (``break``, an exception, task cancellation) closes the HTTP
response, which vLLM and llama.cpp's server take as an abort of the request.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from core.errors import ModelError, ModelHTTPError, PoolUnavailable
from core.pools import wire
from strategies.protocol import ModelRequest, Usage

if TYPE_CHECKING:
    from core.pools.client import Attempt, PoolClient


@dataclass
class StreamDelta:
    text: str
    finish_reason: str | None = None


class PoolStream:
    """One streamed call. Iterate once for deltas; then read what the server reported.

    ``usage`` is the server's count when it sent one (``stream_options.include_usage``),
    else ``None`` — the caller then counts the deltas it received.
    """

    def __init__(self, client: PoolClient, request: ModelRequest) -> None:
        if request.n != 1:
            raise ValueError("a streamed call has n == 1; fan out several streams instead")
        self.client = client
        self.request = request
        self.attempts: list[Attempt] = []
        self.endpoint: str | None = None
        self.model: str | None = None
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.deltas = 0
        self.latency_ms = 0.0
        self._prefill = self._echoed_prefill()

    def _echoed_prefill(self) -> str:
        # llama.cpp echoes a continued assistant message before the continuation.
        request, settings = self.request, self.client.settings
        if settings.kind != "llamacpp" or not request.continue_final_message:
            return ""
        last = (request.messages or [{}])[-1]
        return last.get("content", "") if last.get("role") == "assistant" else ""

    async def __aiter__(self) -> AsyncGenerator[StreamDelta, None]:
        client, settings = self.client, self.client.settings
        path, body = wire.build_body(self.request, settings)
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        chat = self.request.messages is not None
        started = time.perf_counter()
        faults: dict[Any, int] = {}
        last_error = "no attempt made"
        try:
            for attempt in range(settings.max_attempts):
                endpoint = client._pick(faults)
                if endpoint is None:
                    raise client._all_open_error(None)
                outcome = _Outcome()
                attempt_deltas = self._attempt(endpoint, path, body, chat, outcome)
                # aclosing: a consumer that stops early closes the HTTP response now,
                # not whenever the abandoned generator is collected.
                async with contextlib.aclosing(attempt_deltas) as deltas:
                    async for delta in deltas:
                        yield delta
                if outcome.done:
                    return
                faults[endpoint] = faults.get(endpoint, 0) + 1
                last_error = outcome.error or last_error
                if attempt + 1 < settings.max_attempts:
                    delay = client._backoff(attempt, outcome.retry_after)
                    if delay > 0:
                        await client._sleep(delay)
            raise PoolUnavailable(
                f"pool {client.name!r}: all {settings.max_attempts} attempts failed; "
                f"last: {last_error}",
                last_error=last_error,
            )
        finally:
            self.latency_ms = (time.perf_counter() - started) * 1000.0

    async def _attempt(
        self,
        endpoint: Any,
        path: str,
        body: dict[str, Any],
        chat: bool,
        outcome: _Outcome,
    ) -> AsyncGenerator[StreamDelta, None]:
        from core.pools.client import Attempt

        client = self.client
        probe = endpoint.begin(client._clock())
        status: int | None = None
        verdict = "abandoned"
        t0 = time.perf_counter()
        started_at = time.time()
        received = False
        try:
            async with endpoint.semaphore:
                try:
                    async with client._http.stream(
                        "POST",
                        endpoint.url + path,
                        json=body,
                        headers=client._headers,
                        timeout=client._timeout,
                    ) as response:
                        status = response.status_code
                        if status != 200:
                            content = await response.aread()
                            error = f"HTTP {status}: {wire.error_message(content)}"
                            if status in (429, 500, 502, 503, 504):
                                verdict, outcome.error = "fault", f"{endpoint.url}: {error}"
                                outcome.retry_after = wire.retry_after(
                                    response.headers.get("retry-after")
                                )
                                return
                            verdict = "ok"
                            raise ModelHTTPError(
                                f"pool {client.name!r}: {endpoint.url} rejected the request: "
                                f"{error}",
                                endpoint=endpoint.url,
                                upstream_status=status,
                            )
                        self.endpoint = endpoint.url
                        async for line in response.aiter_lines():
                            delta = self._parse_line(line, chat)
                            if delta is None:
                                continue
                            if delta.text:
                                received = True
                                self.deltas += 1
                            yield delta
                        verdict = "ok"
                        outcome.done = True
                except httpx.RequestError as exc:
                    error = wire.describe(exc)
                    if received:
                        verdict = "fault"
                        raise ModelError(
                            f"pool {client.name!r}: {endpoint.url}: stream broke: {error}"
                        ) from exc
                    verdict, outcome.error = "fault", f"{endpoint.url}: {error}"
        finally:
            if verdict == "ok":
                endpoint.succeeded(probe)
            elif verdict == "fault":
                endpoint.failed(client._clock(), probe)
            else:
                endpoint.abandoned(probe)
            self.attempts.append(
                Attempt(
                    endpoint=endpoint.url,
                    started_at=started_at,
                    latency_ms=(time.perf_counter() - t0) * 1000.0,
                    status=status,
                    error=None if verdict == "ok" else (outcome.error or "cancelled"),
                )
            )

    def _parse_line(self, line: str, chat: bool) -> StreamDelta | None:
        if not line.startswith("data:"):
            return None
        payload = line[5:].strip()
        if not payload or payload == "[DONE]":
            return None
        try:
            data = json.loads(payload)
        except ValueError as exc:
            raise ModelError(f"pool {self.client.name!r}: invalid stream chunk: {exc}") from exc
        if isinstance(data.get("model"), str):
            self.model = data["model"]
        if data.get("usage"):
            self.usage = Usage(
                prompt_tokens=data["usage"].get("prompt_tokens") or 0,
                completion_tokens=data["usage"].get("completion_tokens") or 0,
            )
        choices = data.get("choices") or []
        if not choices:
            return None
        choice = choices[0]
        text = ((choice.get("delta") or {}).get("content") if chat else choice.get("text")) or ""
        finish = choice.get("finish_reason")
        if finish:
            self.finish_reason = finish
        if self._prefill and text:
            text = self._strip_prefill(text)
        if not text and not finish:
            return None
        return StreamDelta(text, finish)

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


@dataclass
class _Outcome:
    done: bool = False
    error: str | None = None
    retry_after: float | None = None
