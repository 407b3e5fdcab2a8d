"""The strategy ``Context`` as core implements it: journaled, budgeted, traced model roles.

One model call, in order: reserve budget (may lower max_tokens) -> assign the journal
key -> open the model_call span -> journal hit? answer from it : (strict? fail : call the
pool, then write journal row + span in one transaction) -> settle the budget -> return.
Everything before the first ``await`` is synchronous, which is what makes keys, span
sequence numbers and reservations follow program order under concurrent fan-out.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from pydantic import BaseModel

from core.budget import JobBudget, Reservation
from core.errors import JournalMiss, ModelError, PoolUnavailable
from core.journal import Journal
from core.pools.client import PoolClient, PoolResult
from core.pools.streaming import PoolStream
from core.trace import Tracer, now
from strategies.protocol import (
    CANCELLED,
    Choice,
    Generation,
    ModelRequest,
    StrategyResult,
    TokenLogprob,
    Usage,
)


def _choices_from_json(raw: list[dict[str, Any]]) -> list[Choice]:
    choices = []
    for c in raw:
        tokens = None
        if c.get("tokens") is not None:
            tokens = [
                TokenLogprob.model_construct(
                    token=t["token"], logprob=t["logprob"], top=[tuple(x) for x in t.get("top", [])]
                )
                for t in c["tokens"]
            ]
        choices.append(
            Choice.model_construct(
                index=c["index"],
                text=c["text"],
                finish_reason=c.get("finish_reason"),
                tokens=tokens,
            )
        )
    return choices


def _choices_to_json(choices: list[Choice]) -> list[dict[str, Any]]:
    out = []
    for c in choices:
        item: dict[str, Any] = {"index": c.index, "text": c.text, "finish_reason": c.finish_reason}
        if c.tokens is not None:
            item["tokens"] = [
                {"token": t.token, "logprob": t.logprob, "top": [list(x) for x in t.top]}
                for t in c.tokens
            ]
        out.append(item)
    return out


class RoleModel:
    """``ctx.models[role]``: a strategy role bound to a pool, through the journal."""

    def __init__(
        self,
        name: str,
        pool: PoolClient | None,
        model: str,
        *,
        journal: Journal,
        budget: JobBudget,
        tracer: Tracer,
        price_in_per_1k: float = 0.0,
        price_out_per_1k: float = 0.0,
    ) -> None:
        self.name = name
        self.pool = pool
        self.model = model
        self.journal = journal
        self.budget = budget
        self.tracer = tracer
        self.price_in = price_in_per_1k
        self.price_out = price_out_per_1k

    def cost(self, usage: Usage) -> float:
        return (
            usage.prompt_tokens * self.price_in + usage.completion_tokens * self.price_out
        ) / 1000

    def _reserve(self, request: ModelRequest) -> tuple[Reservation, ModelRequest]:
        reservation = self.budget.reserve(
            self.name,
            max_tokens=request.max_tokens,
            n=request.n,
            price_in_per_1k=self.price_in,
            price_out_per_1k=self.price_out,
            # A generous guess (2 chars per token): the reservation must not undershoot.
            prompt_tokens_estimate=request.prompt_chars() // 2 + 8,
        )
        if reservation.max_tokens != request.max_tokens:
            self.tracer.event(
                "budget_clamp",
                {"role": self.name, "asked": request.max_tokens, "granted": reservation.max_tokens},
            )
            request = request.model_copy(update={"max_tokens": reservation.max_tokens})
        return reservation, request

    async def generate(self, request: ModelRequest) -> Generation:
        reservation, request = self._reserve(request)
        call = self.journal.issue(self.name, self.model, request)
        span = self.tracer.new_span(
            "model_call",
            f"{self.name}.generate",
            {"role": self.name, "model": self.model, "key": call.key[:16], "n": request.n},
        )
        usage: Usage | None = None
        paid: float | None = None
        try:
            entry = self.journal.lookup(call)
            if entry is not None:
                usage = Usage(
                    prompt_tokens=entry.prompt_tokens, completion_tokens=entry.completion_tokens
                )
                choices = _choices_from_json(entry.response["choices"])
                span.attributes = {
                    **span.attributes,
                    "journal": "hit",
                    "endpoint": entry.endpoint,
                    "recorded_latency_ms": entry.latency_ms,
                }
                self._close(span, usage, entry.cost)
                paid = entry.cost
                self.tracer.writer.submit([span])
                return Generation(
                    role=self.name,
                    model=self.model,
                    choices=choices,
                    usage=usage,
                    call_key=call.key,
                    replayed=True,
                    latency_ms=entry.latency_ms,
                )
            if self.journal.mode == "strict" or self.pool is None:
                raise JournalMiss(
                    f"strict replay: call {call.key[:12]}#{call.occurrence} to role "
                    f"'{self.name}' is not in the journal",
                    key=call.key,
                    occurrence=call.occurrence,
                    role=self.name,
                )
            self.tracer.notify("call_start", {"role": self.name, "n": request.n})
            result: PoolResult = await self.pool.generate(request, timeout_s=reservation.timeout_s)
            usage = result.usage
            cost = self.cost(usage)
            entry = self.journal.new_entry(
                call,
                role=self.name,
                request=request,
                response={
                    "model": result.model,
                    "choices": _choices_to_json(result.choices),
                    "emulated_n": result.emulated_n,
                },
                endpoint=result.endpoint,
                latency_ms=result.latency_ms,
                attempts=[a.model_dump() for a in result.attempts],
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cost=cost,
            )
            span.attributes = {
                **span.attributes,
                "journal": "miss",
                "endpoint": result.endpoint,
                "latency_ms": round(result.latency_ms, 3),
                "attempts": len(result.attempts),
                "emulated_n": result.emulated_n,
                "finish_reasons": [c.finish_reason for c in result.choices],
            }
            self._close(span, usage, cost)
            # Record before the strategy sees the result: a crash after this line
            # never pays for this call again.
            done = self.tracer.writer.submit([entry, span], wait=True)
            assert done is not None
            await done
            self.tracer.notify("call_end", {"role": self.name, "tokens": usage.completion_tokens})
            return Generation(
                role=self.name,
                model=self.model,
                choices=result.choices,
                usage=usage,
                call_key=call.key,
                latency_ms=result.latency_ms,
            )
        except BaseException as exc:
            self._fail(span, exc)
            raise
        finally:
            self._settle(reservation, usage, paid)

    def _fail(self, span: Any, exc: BaseException) -> None:
        """Close a call's span that an error (or a cancellation) ended early."""
        if span.end_ts is None:
            span.attributes = {**span.attributes, "error": f"{type(exc).__name__}: {exc}"}
            span.end_ts = now()
            self.tracer.writer.submit([span])

    def _settle(self, reservation: Reservation, usage: Usage | None, paid: float | None) -> None:
        # A journal hit costs what the recorded call cost (a strict replay has no
        # pool, hence no prices, but must report the same spend as its parent).
        cost = paid if paid is not None else self.cost(usage) if usage else 0.0
        self.budget.settle(reservation, usage, cost)

    def _close(self, span: Any, usage: Usage, cost: float) -> None:
        span.end_ts = now()
        span.prompt_tokens = usage.prompt_tokens
        span.completion_tokens = usage.completion_tokens
        span.cost = cost

    @contextlib.asynccontextmanager
    async def stream(self, request: ModelRequest) -> AsyncIterator[RoleStream]:
        """A streamed call; see ``strategies.protocol.TokenStream``.

        Journaled like ``generate`` (under a key of its own), with the deltas as they
        arrived, so a replay hands the consumer the same pieces. A consumer that leaves
        early gets ``finish_reason == CANCELLED`` and pays for the tokens it received.
        """
        if request.n != 1:
            raise ValueError("stream() needs n == 1; open several streams to fan out")
        reservation, request = self._reserve(request)
        call = self.journal.issue(self.name, self.model, request, stream=True)
        span = self.tracer.new_span(
            "model_call",
            f"{self.name}.stream",
            {"role": self.name, "model": self.model, "key": call.key[:16], "n": 1, "stream": True},
        )
        handle = RoleStream()
        usage: Usage | None = None
        paid: float | None = None
        try:
            entry = self.journal.lookup(call)
            if entry is not None:
                handle._source = _recorded_deltas(entry.response.get("deltas") or [])
                yield handle
                usage = Usage(
                    prompt_tokens=entry.prompt_tokens, completion_tokens=entry.completion_tokens
                )
                handle.result = Generation(
                    role=self.name,
                    model=self.model,
                    choices=_choices_from_json(entry.response["choices"]),
                    usage=usage,
                    call_key=call.key,
                    replayed=True,
                    latency_ms=entry.latency_ms,
                )
                span.attributes = {
                    **span.attributes,
                    "journal": "hit",
                    "endpoint": entry.endpoint,
                    "recorded_latency_ms": entry.latency_ms,
                    "finish_reasons": [handle.result.choices[0].finish_reason],
                }
                self._close(span, usage, entry.cost)
                paid = entry.cost
                self.tracer.writer.submit([span])
                return
            if self.journal.mode == "strict" or self.pool is None:
                raise JournalMiss(
                    f"strict replay: streamed call {call.key[:12]}#{call.occurrence} to role "
                    f"'{self.name}' is not in the journal",
                    key=call.key,
                    occurrence=call.occurrence,
                    role=self.name,
                )
            self.tracer.notify("call_start", {"role": self.name, "n": 1})
            pool_stream = self.pool.stream(request)
            handle._source = handle._live(pool_stream)
            # The consumer may leave by an exception — its own, or a cancellation
            # (First Finish Search cancels the slower samples). Either way the partial
            # call is journaled first, then the exception goes on.
            consumer_error: BaseException | None = None
            try:
                yield handle
            except BaseException as exc:
                consumer_error = exc
            finally:
                await handle.close_source()
            if handle.failure is not None:
                raise consumer_error or handle.failure
            usage, finish, estimated = _stream_usage(pool_stream, handle, request)
            cost = self.cost(usage)
            choice = {"index": 0, "text": handle.text, "finish_reason": finish}
            entry = self.journal.new_entry(
                call,
                role=self.name,
                request=request,
                response={
                    "model": pool_stream.model or self.model,
                    "choices": [choice],
                    "deltas": handle.pieces,
                    "emulated_n": False,
                    "prompt_tokens_estimated": estimated,
                },
                endpoint=pool_stream.endpoint,
                latency_ms=pool_stream.latency_ms,
                attempts=[a.model_dump() for a in pool_stream.attempts],
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cost=cost,
            )
            handle.result = Generation(
                role=self.name,
                model=self.model,
                choices=_choices_from_json([choice]),
                usage=usage,
                call_key=call.key,
                latency_ms=pool_stream.latency_ms,
            )
            span.attributes = {
                **span.attributes,
                "journal": "miss",
                "endpoint": pool_stream.endpoint,
                "latency_ms": round(pool_stream.latency_ms, 3),
                "attempts": len(pool_stream.attempts),
                "finish_reasons": [finish],
            }
            self._close(span, usage, cost)
            done = self.tracer.writer.submit([entry, span], wait=True)
            assert done is not None
            # Shielded: a consumer cancelled mid-stream still gets its partial call on
            # record before the cancellation travels on.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(done)
            self.tracer.notify("call_end", {"role": self.name, "tokens": usage.completion_tokens})
            if consumer_error is not None:
                raise consumer_error
        except BaseException as exc:
            self._fail(span, exc)
            raise
        finally:
            self._settle(reservation, usage, paid)


class RoleStream:
    """What ``RoleModel.stream`` yields: iterate for deltas; ``result`` after the block."""

    def __init__(self) -> None:
        self.text = ""
        self.pieces: list[str] = []
        self.result: Generation | None = None
        self.finished = False
        self.finish_reason: str | None = None
        self.failure: BaseException | None = None
        self._source: AsyncIterator[str] | None = None

    def __aiter__(self) -> AsyncIterator[str]:
        return self._deltas()

    async def _deltas(self) -> AsyncIterator[str]:
        assert self._source is not None, "iterate inside the 'async with' block"
        async for piece in self._source:
            self.text += piece
            self.pieces.append(piece)
            yield piece

    async def _live(self, pool_stream: PoolStream) -> AsyncIterator[str]:
        try:
            async for delta in pool_stream:
                if delta.finish_reason:
                    self.finish_reason = delta.finish_reason
                if delta.text:
                    yield delta.text
            self.finished = True
        except (ModelError, PoolUnavailable) as exc:
            self.failure = exc
            raise

    async def close_source(self) -> None:
        source = self._source
        if source is not None and hasattr(source, "aclose"):
            await source.aclose()


async def _recorded_deltas(pieces: list[str]) -> AsyncIterator[str]:
    for piece in pieces:
        yield piece


def _stream_usage(
    pool_stream: PoolStream, handle: RoleStream, request: ModelRequest
) -> tuple[Usage, str, bool]:
    """Usage and finish reason of a stream that ended or was stopped by its consumer."""
    if handle.finished:
        finish = handle.finish_reason or pool_stream.finish_reason or "stop"
    else:
        finish = CANCELLED
    if pool_stream.usage is not None and handle.finished:
        return pool_stream.usage, finish, False
    # Stopped early: the server never sent its count. Each delta is one decoded token on
    # vLLM and llama.cpp; the prompt is estimated at 4 characters per token (flagged).
    prompt = pool_stream.usage.prompt_tokens if pool_stream.usage else request.prompt_chars() // 4
    return (
        Usage(prompt_tokens=prompt, completion_tokens=pool_stream.deltas),
        finish,
        pool_stream.usage is None,
    )


ChildRunner = Callable[[BaseModel, str, "JobContext"], Awaitable[StrategyResult]]


class JobContext:
    """Implements ``strategies.protocol.Context`` for one job run."""

    def __init__(
        self,
        *,
        models: Mapping[str, RoleModel],
        budget: JobBudget,
        tracer: Tracer,
        seed: int,
        run_child: ChildRunner,
    ) -> None:
        self.models = models
        self.budget = budget
        self.tracer = tracer
        self.rng = random.Random(seed)
        self._run_child = run_child
        self.started = time.monotonic()

    def trace(self, name: str, **attributes: Any) -> None:
        self.tracer.event(name, attributes)

    @contextlib.asynccontextmanager
    async def span(self, name: str, **attributes: Any) -> AsyncIterator[Any]:
        async with self.tracer.span("span", name, **attributes) as span:
            yield span

    async def run(self, spec: BaseModel, problem: str) -> StrategyResult:
        return await self._run_child(spec, problem, self)
