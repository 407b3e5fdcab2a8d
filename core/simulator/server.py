"""The simulator's HTTP face: an OpenAI-compatible server on Starlette + uvicorn.

Starlette is used directly (no request models) because this server is the backend of
the per-call overhead benchmarks: a simple request must cost well under a millisecond
of server CPU. ``Simulator`` runs it in a background thread for tests; ``serve`` runs
it in the foreground for ``ponder simulate``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Literal

import uvicorn
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from core.simulator import engine as eng
from core.simulator import wire
from core.simulator.config import Failure, SimulatorConfig
from core.simulator.state import SimState, SimulatorStats, Ticket

__all__ = ["SimState", "Simulator", "SimulatorStats", "build_app", "serve"]

HANG_LIMIT_S = 60.0


class _Watch:
    """Sleeps that end early when the client goes away or the simulator stops."""

    def __init__(self, receive: Receive, closing: asyncio.Event) -> None:
        self._receive = receive
        self._closing = closing
        self._task: asyncio.Task[str] | None = None

    @property
    def reason(self) -> str | None:
        return self._task.result() if self._task is not None and self._task.done() else None

    async def until(self, deadline: float) -> bool:
        """Sleep until the loop time ``deadline``; False if interrupted."""
        seconds = deadline - asyncio.get_running_loop().time()
        if seconds <= 0:
            return self.reason is None
        if self._task is None:
            self._task = asyncio.ensure_future(self._watch())
        done, _ = await asyncio.wait({self._task}, timeout=seconds)
        return not done

    async def _watch(self) -> str:
        async def gone() -> None:
            while (await self._receive())["type"] != "http.disconnect":
                pass

        tasks = {asyncio.ensure_future(gone()), asyncio.ensure_future(self._closing.wait())}
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
        return "closing" if self._closing.is_set() else "disconnect"

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


async def _decode(state: SimState, job: wire.Job, watch: _Watch, start: float) -> bool:
    """Wait out a non-streamed request; per-token cost is re-read in a few segments
    so that concurrency slowdown follows the load as it changes."""
    lat = job.latency
    deadline = start + eng.prefill_seconds(lat, job.prompt_tokens)
    if not await watch.until(deadline):
        return False
    steps = eng.decode_steps(lat, job.counts)
    segment = max(1, -(-steps // 8))
    for done in range(0, steps, segment):
        others = max(state.running - 1, 0)
        deadline += min(segment, steps - done) * eng.step_seconds(lat, others)
        if not await watch.until(deadline):
            return False
    return True


class _Stream(Response):
    """Server-sent events paced by the latency model; owns the request's ticket."""

    def __init__(self, job: wire.Job, ticket: Ticket, start: float) -> None:
        # Response.__init__ would add "content-length: 0"; a stream has no length.
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
        ]
        self.job, self.ticket, self.start = job, ticket, start

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        job = self.job
        watch = _Watch(receive, self.ticket.state.closing)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})

            async def emit(data: bytes) -> None:
                await send({"type": "http.response.body", "body": data, "more_body": True})

            if job.req.kind == "chat":
                for c in range(len(job.samples)):
                    delta = {"role": "assistant", "content": ""}
                    await emit(
                        job.chunk(
                            [{"index": c, "delta": delta, "logprobs": None, "finish_reason": None}]
                        )
                    )
            lat = job.latency
            deadline = self.start + eng.prefill_seconds(lat, job.prompt_tokens)
            if not await watch.until(deadline):
                self._aborted(watch)
                return
            for c, count in enumerate(job.counts):
                if count == 0:
                    await emit(job.finish_chunk(c))
            for step in eng.stream_order(lat, job.counts):
                deadline += eng.step_seconds(lat, max(self.ticket.state.running - 1, 0))
                if not await watch.until(deadline):
                    self._aborted(watch)
                    return
                for c, t in step:
                    await emit(job.token_chunk(c, t))
                    if t == job.counts[c] - 1:
                        await emit(job.finish_chunk(c))
            if job.req.include_usage:
                await emit(job.chunk([], usage=job.usage()))
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        finally:
            watch.close()
            self.ticket.release()

    def _aborted(self, watch: _Watch) -> None:
        if watch.reason == "disconnect":
            self.ticket.state.count(aborted=True)


async def _fail(state: SimState, failure: Failure, request: Request) -> Response:
    if failure.kind == "status":
        headers = (
            {"retry-after": f"{failure.retry_after_s:g}"}
            if failure.retry_after_s is not None
            else None
        )
        return wire.error_response(
            failure.status, f"simulated failure (HTTP {failure.status})", headers=headers
        )
    if failure.kind == "hang":
        watch = _Watch(request.receive, state.closing)
        try:
            if await watch.until(asyncio.get_running_loop().time() + HANG_LIMIT_S):
                return wire.error_response(504, f"simulated hang ended after {HANG_LIMIT_S:g} s")
            return wire.error_response(503, "simulator stopping")
        finally:
            watch.close()
    conns = state.server.server_state.connections if state.server is not None else set()
    conn = next((c for c in conns if getattr(c, "client", None) == request.client), None)
    if conn is None:
        raise RuntimeError("disconnect failure needs the Simulator or serve() runner")
    conn.transport.close()
    # Wait until uvicorn notices, so it does not answer 500 on our behalf.
    while (await request.receive())["type"] != "http.disconnect":
        pass
    return Response(status_code=499)


def _handler(
    state: SimState, kind: Literal["chat", "completion"]
) -> Callable[[Request], Awaitable[Response]]:
    async def generate(request: Request) -> Response:
        start = asyncio.get_running_loop().time()
        state.enter(kind)
        ticket = Ticket(state)
        handed_off = False
        try:
            try:
                req = wire.parse_request(
                    json.loads(await request.body()), kind, state.engine.config
                )
            except json.JSONDecodeError as exc:
                return wire.error_response(400, f"request body is not valid JSON: {exc}")
            except wire.BadRequest as exc:
                return wire.error_response(400, exc.message, exc.param)
            engine = state.engine
            failure = engine.failure_for(req.prompts)
            state.count(req.model, failed=failure is not None)
            if failure is not None:
                if failure.kind == "hang":
                    await ticket.run()  # a stuck request still occupies the server
                return await _fail(state, failure, request)
            await ticket.run()
            samples = [s for p in req.prompts for s in engine.sample(p, req.model, req.params)]
            prompt_tokens = sum(len(eng.tokenize(p)) for p in req.prompts)
            latency = engine.latency_for(req.prompts[0], req.model)
            layout = engine.config.completions_logprobs_layout
            job = wire.Job(req, samples, prompt_tokens, latency, state.next_id(), layout)
            state.count(samples=len(samples), tokens=sum(s.completion_tokens for s in samples))
            if req.stream:
                handed_off = True  # the stream releases the ticket when it ends
                return _Stream(job, ticket, start)
            if not eng.is_instant(job.latency):
                watch = _Watch(request.receive, state.closing)
                try:
                    if not await _decode(state, job, watch, start):
                        state.count(aborted=watch.reason == "disconnect")
                        return (
                            wire.error_response(503, "simulator stopping")
                            if watch.reason == "closing"
                            else Response(status_code=499)
                        )
                finally:
                    watch.close()
            return JSONResponse(job.body())
        finally:
            if not handed_off:
                ticket.release()

    return generate


def build_app(state: SimState) -> Starlette:
    """The ASGI app over ``state`` (run it under ``Simulator`` or ``serve``)."""

    async def models(request: Request) -> Response:
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "ponder-simulator"}
            for m in state.engine.config.models
        ]
        return JSONResponse({"object": "list", "data": data})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def stats(request: Request) -> Response:
        return JSONResponse(state.snapshot().model_dump())

    async def reset(request: Request) -> Response:
        state.reset()
        return JSONResponse({"status": "ok"})

    async def put_config(request: Request) -> Response:
        try:
            config = SimulatorConfig.model_validate_json(await request.body())
        except ValidationError as exc:
            return wire.error_response(400, f"invalid simulator config: {exc}")
        state.set_config(config)
        return JSONResponse({"status": "ok"})

    async def metrics(request: Request) -> Response:
        label = json.dumps(state.engine.config.models[0])
        lines = []
        for name, value, help_ in (
            ("vllm:num_requests_running", state.running, "Requests being generated."),
            ("vllm:num_requests_waiting", state.waiting, "Requests queued for a slot."),
        ):
            lines += [
                f"# HELP {name} {help_}",
                f"# TYPE {name} gauge",
                f"{name}{{model_name={label}}} {float(value)}",
            ]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.loop = asyncio.get_running_loop()
        state.closing = asyncio.Event()
        yield

    return Starlette(
        routes=[
            Route("/v1/chat/completions", _handler(state, "chat"), methods=["POST"]),
            Route("/v1/completions", _handler(state, "completion"), methods=["POST"]),
            Route("/v1/models", models),
            Route("/health", health),
            Route("/sim/stats", stats),
            Route("/sim/reset", reset, methods=["POST"]),
            Route("/sim/config", put_config, methods=["PUT"]),
            Route("/metrics", metrics),
        ],
        lifespan=lifespan,
    )


def _uvicorn(state: SimState, host: str, port: int, log_level: str) -> uvicorn.Server:
    config = uvicorn.Config(
        build_app(state),
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        ws="none",
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    state.server = server
    return server


class Simulator:
    """Runs the server with uvicorn in a background thread (its own event loop).

    Example:
        with Simulator(SimulatorConfig(default_reply="4")) as sim:
            httpx.post(f"{sim.url}/v1/chat/completions", json={...})
    """

    def __init__(
        self, config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._state = SimState(config or SimulatorConfig())
        self._host, self._port = host, port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None

    def start(self) -> str:
        """Start serving; returns the base URL once the server accepts connections."""
        if self._url is not None:
            return self._url
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        # proto must be explicit: asyncio only sets TCP_NODELAY on accepted sockets whose
        # proto is IPPROTO_TCP, and without it every response waits ~40 ms for an ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, self._port))
        port = sock.getsockname()[1]
        server = self._server = _uvicorn(self._state, self._host, port, "warning")
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"simulator:{port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                sock.close()
                raise RuntimeError(f"simulator failed to start on {self._host}:{port}")
            time.sleep(0.005)
        host = f"[{self._host}]" if family == socket.AF_INET6 else self._host
        self._url = f"http://{host}:{port}"
        return self._url

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        if self._state.loop is not None and not self._state.loop.is_closed():
            self._state.loop.call_soon_threadsafe(self._state.closing.set)
        self._server.should_exit = True
        self._thread.join(timeout=15)
        self._server = self._thread = self._url = None

    def __enter__(self) -> Simulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("simulator is not running; call start() first")
        return self._url

    @property
    def stats(self) -> SimulatorStats:
        return self._state.snapshot()

    def reset(self) -> None:
        """Zero the stats, the rule counters and the failure counters."""
        self._state.reset()

    def set_config(self, config: SimulatorConfig) -> None:
        """Replace the script live (also resets every counter)."""
        self._state.set_config(config)


def serve(config: SimulatorConfig, host: str, port: int) -> None:
    """Serve in the foreground until interrupted (``ponder simulate``)."""
    state = SimState(config)
    _uvicorn(state, host, port, "info").run()
