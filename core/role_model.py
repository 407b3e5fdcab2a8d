"""One model role as a strategy sees it: journaled, budgeted, traced calls.

One model call, in order: reserve budget (may lower max_tokens) -> assign the journal
key -> open the model_call span -> journal hit? answer from it : (strict? fail : call the
pool, then queue journal row + span for the job's next commit) -> settle the budget -> return.
Everything before the first ``await`` is synchronous, which is what makes keys, span
sequence numbers and reservations follow program order under concurrent fan-out.

``_JournaledCall`` is that skeleton, written once; ``RoleModel.generate`` (plain) and
``RoleModel.stream`` (deltas handed to the consumer before the write) are its two bodies.
The pool gets the budget's remaining seconds as its deadline, and a call it cuts there
ends as ``BudgetExhausted("seconds")``, plain or streamed.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any

from core import metrics
from core.budget import JobBudget, Reservation
from core.db.models import ModelCall
from core.errors import JournalMiss, ModelError, ModelTimeout
from core.journal import Journal
from core.pools import wire
from core.pools.attempts import Attempt
from core.pools.client import PoolClient, PoolResult
from core.pools.streaming import PoolStream
from core.trace import Tracer, now
from strategies.protocol import (
    CANCELLED,
    BudgetExhausted,
    Choice,
    Generation,
    ModelRequest,
    TokenLogprob,
    ToolCall,
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
        calls = c.get("tool_calls")
        choices.append(
            Choice.model_construct(
                index=c["index"],
                text=c["text"],
                finish_reason=c.get("finish_reason"),
                tokens=tokens,
                tool_calls=[ToolCall.model_validate(x) for x in calls] if calls else None,
                reasoning=c.get("reasoning"),
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
        if c.tool_calls:
            item["tool_calls"] = [x.model_dump() for x in c.tool_calls]
        if c.reasoning:
            item["reasoning"] = c.reasoning
        out.append(item)
    return out


def _usage_fields(usage: Usage, cost: float | None) -> dict[str, Any]:
    """What the journal keeps of a call's usage beyond its columns: reasoning tokens and
    whether its cost is known (absent keys: none, and known — entries written earlier)."""
    fields: dict[str, Any] = {}
    if usage.reasoning_tokens:
        fields["reasoning_tokens"] = usage.reasoning_tokens
    if usage.reasoning_tokens_estimated:
        fields["reasoning_tokens_estimated"] = True
    if cost is None:
        fields["cost_known"] = False
    return fields


def _recorded_usage(entry: ModelCall) -> tuple[Usage, float | None]:
    """A journal entry's usage and cost (None: the pool had no price)."""
    response = entry.response
    usage = Usage(
        prompt_tokens=entry.prompt_tokens,
        completion_tokens=entry.completion_tokens,
        reasoning_tokens=int(response.get("reasoning_tokens") or 0),
        reasoning_tokens_estimated=bool(response.get("reasoning_tokens_estimated")),
    )
    return usage, (None if response.get("cost_known") is False else entry.cost)


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
        price_in_per_1k: float | None = None,
        price_out_per_1k: float | None = None,
    ) -> None:
        self.name = name
        self.pool = pool
        self.model = model
        self.journal = journal
        self.budget = budget
        self.tracer = tracer
        # No price at all: the cost is unknown (None), not 0; one price set: the other is 0.
        self.priced = price_in_per_1k is not None or price_out_per_1k is not None
        self.price_in = price_in_per_1k or 0.0
        self.price_out = price_out_per_1k or 0.0

    def cost(self, usage: Usage) -> float | None:
        """What ``usage`` costs at the pool's prices (reasoning tokens are completion
        tokens, priced once); None when the pool has no price."""
        if not self.priced:
            return None
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
        async with _JournaledCall(self, request, "generate") as call:
            entry = call.entry
            if entry is not None:
                choices = _choices_from_json(entry.response["choices"])
                return call.replayed(entry, choices)
            result: PoolResult = await call.live().generate(
                call.request, timeout_s=call.reservation.timeout_s
            )
            call.recorded(
                response={
                    "model": result.model,
                    "choices": _choices_to_json(result.choices),
                    "emulated_n": result.emulated_n,
                },
                choices=result.choices,
                usage=result.usage,
                endpoint=result.endpoint,
                latency_ms=result.latency_ms,
                attempts=result.attempts,
                span={
                    "emulated_n": result.emulated_n,
                    "finish_reasons": [c.finish_reason for c in result.choices],
                },
            )
            assert call.result is not None
            return call.result

    def _name_role(self, exc: ModelError) -> None:
        """Say whose call failed: the role, and the pool and model it ran on.

        The pool's message names only the pool (``pool 'large': all 4 attempts failed;
        last: endpoint 1 of 2: HTTP 500: …``), and a role may run on another role's pool
        (``--role small=large``). Endpoints stay named by position: the message is the
        job's error, which tenants read.
        """
        if "role" in exc.details:
            return
        pool = self.pool.name if self.pool is not None else exc.details.get("pool")
        body = exc.message.removeprefix(f"pool {pool!r}: ")
        exc.message = f"role {self.name!r} (pool {pool!r}, model {self.model!r}): {body}"
        exc.args = (exc.message,)
        exc.details["role"] = self.name

    def _fail(self, span: Any, exc: BaseException) -> None:
        """Close a call's span that an error (or a cancellation) ended early."""
        if span.end_ts is None:
            span.attributes = {**span.attributes, "error": f"{type(exc).__name__}: {exc}"}
            span.end_ts = now()
            self.tracer.writer.submit([span])

    def _settle(
        self, reservation: Reservation, usage: Usage | None, paid: tuple[float | None] | None
    ) -> None:
        # A journal hit costs what the recorded call cost (a strict replay has no
        # pool, hence no prices, but must report the same spend as its parent) —
        # including "unknown" when the recorded call's pool had no price.
        cost = paid[0] if paid is not None else self.cost(usage) if usage else 0.0
        self.budget.settle(reservation, usage, cost)

    def _close(self, span: Any, usage: Usage, cost: float | None) -> None:
        span.end_ts = now()
        span.prompt_tokens = usage.prompt_tokens
        span.completion_tokens = usage.completion_tokens
        # The column holds a number; an unknown cost is 0 there, flagged in the attributes.
        span.cost = cost or 0.0
        extra: dict[str, Any] = {"reasoning_tokens": usage.reasoning_tokens}
        if usage.reasoning_tokens_estimated:
            extra["reasoning_tokens_estimated"] = True
        if cost is None:
            extra["cost_known"] = False
        span.attributes = {**span.attributes, **extra}

    def _out_of_time(self, exc: ModelTimeout) -> BudgetExhausted:
        """What a call cut by the job's deadline becomes: the anytime outcome.

        Every deadline a RoleModel gives the pool is the budget's ``max_seconds``, so
        the pool's ``ModelTimeout`` always means the job's time is up.
        """
        return self.budget.out_of_time(f"{exc.details.get('timeout_s')} s left at the call")

    @contextlib.asynccontextmanager
    async def stream(self, request: ModelRequest) -> AsyncIterator[RoleStream]:
        """A streamed call; see ``strategies.protocol.TokenStream``.

        Journaled like ``generate`` (under a key of its own), with the deltas as they
        arrived, so a replay hands the consumer the same pieces. A consumer that leaves
        early gets ``finish_reason == CANCELLED`` and pays for the tokens it received.
        The job's deadline (``max_seconds``) stops the stream too: the part received is
        journaled as ``CANCELLED`` and paid, and the consumer's iteration raises
        ``BudgetExhausted("seconds")``.
        """
        if request.n != 1:
            raise ValueError("stream() needs n == 1; open several streams to fan out")
        async with _JournaledCall(self, request, "stream") as call:
            handle = RoleStream()
            entry = call.entry
            if entry is not None:
                handle._source = _recorded_deltas(entry.response.get("deltas") or [])
                yield handle
                choices = _choices_from_json(entry.response["choices"])
                handle.result = call.replayed(
                    entry, choices, span={"finish_reasons": [choices[0].finish_reason]}
                )
                return
            pool_stream = call.live().stream(call.request, timeout_s=call.reservation.timeout_s)
            handle._source = handle._live(pool_stream, self._out_of_time)
            # The consumer may leave by an exception — its own, or a cancellation
            # (First Finish Search cancels the slower samples), or the deadline's
            # BudgetExhausted. Either way the partial call is journaled first, then the
            # exception goes on.
            consumer_error: BaseException | None = None
            try:
                yield handle
            except BaseException as exc:
                consumer_error = exc
            finally:
                await handle.close_source()
            if handle.failure is not None:
                raise consumer_error or handle.failure
            usage, finish, estimated = _stream_usage(pool_stream, handle, call.request)
            choice: dict[str, Any] = {"index": 0, "text": handle.text, "finish_reason": finish}
            if pool_stream.reasoning:
                choice["reasoning"] = pool_stream.reasoning
            response: dict[str, Any] = {
                "model": pool_stream.model or self.model,
                "choices": [choice],
                "deltas": handle.pieces,
                "emulated_n": False,
                "prompt_tokens_estimated": estimated,
            }
            if handle.out_of_time:
                response["budget_exhausted"] = "seconds"
            call.recorded(
                response=response,
                choices=_choices_from_json([choice]),
                usage=usage,
                endpoint=pool_stream.endpoint,
                latency_ms=pool_stream.latency_ms,
                attempts=pool_stream.attempts,
                span={"finish_reasons": [finish]},
            )
            handle.result = call.result
            if consumer_error is not None:
                raise consumer_error


class _JournaledCall:
    """One journaled model call's skeleton, around a plain or a streamed body.

    Constructing it reserves the budget, assigns the journal key and opens the span —
    synchronously, so all three follow program order. Entering looks the call up (a
    strict replay's miss raises ``JournalMiss``). The body then either answers from
    ``entry`` and calls ``replayed``, or calls the pool it gets from ``live`` and
    ``recorded``. Leaving settles the budget, closes the span of a call that failed,
    and turns the pool's deadline (the budget's) into ``BudgetExhausted("seconds")``.
    """

    __slots__ = (
        "call",
        "entry",
        "kind",
        "model",
        "paid",
        "request",
        "reservation",
        "result",
        "span",
        "usage",
    )

    def __init__(self, model: RoleModel, request: ModelRequest, kind: str) -> None:
        self.model = model
        self.kind = kind
        stream = kind == "stream"
        self.reservation, self.request = model._reserve(request)
        self.call = model.journal.issue(model.name, model.model, self.request, stream=stream)
        attributes: dict[str, Any] = {
            "role": model.name,
            "model": model.model,
            "key": self.call.key[:16],
            "n": self.request.n,
        }
        if stream:
            attributes["stream"] = True
        self.span = model.tracer.new_span("model_call", f"{model.name}.{kind}", attributes)
        self.entry: ModelCall | None = None
        self.usage: Usage | None = None
        self.paid: tuple[float | None] | None = None
        """The recorded cost of a journal hit (None inside: it was unknown)."""
        self.result: Generation | None = None

    async def __aenter__(self) -> _JournaledCall:
        model, call = self.model, self.call
        try:
            self.entry = model.journal.lookup(call)
            if self.entry is None and (model.journal.mode == "strict" or model.pool is None):
                what = "streamed call" if self.kind == "stream" else "call"
                raise JournalMiss(
                    f"strict replay: {what} {call.key[:12]}#{call.occurrence} to role "
                    f"'{model.name}' is not in the journal",
                    key=call.key,
                    occurrence=call.occurrence,
                    role=model.name,
                )
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        model = self.model
        try:
            if isinstance(exc, ModelTimeout):
                out_of_time = model._out_of_time(exc)
                model._fail(self.span, out_of_time)
                raise out_of_time from exc
            if isinstance(exc, ModelError):
                model._name_role(exc)
            if exc is not None:
                model._fail(self.span, exc)
        finally:
            model._settle(self.reservation, self.usage, self.paid)
            metrics.model_call(
                model.name,
                model.model,
                hit=self.entry is not None,
                recorded=self.result is not None,
                error=exc,
            )

    def replayed(
        self, entry: ModelCall, choices: list[Choice], span: dict[str, Any] | None = None
    ) -> Generation:
        """Answer from the journal: close the span as a hit; the recorded cost is paid."""
        model = self.model
        usage, cost = _recorded_usage(entry)
        self.usage = usage
        self.span.attributes = {
            **self.span.attributes,
            "journal": "hit",
            "endpoint": entry.endpoint,
            "recorded_latency_ms": entry.latency_ms,
            **(span or {}),
        }
        model._close(self.span, usage, cost)
        self.paid = (cost,)
        model.tracer.writer.submit([self.span])
        return self._generation(choices, usage, entry.latency_ms, replayed=True)

    def _generation(
        self, choices: list[Choice], usage: Usage, latency_ms: float, *, replayed: bool = False
    ) -> Generation:
        model = self.model
        return Generation(
            role=model.name,
            model=model.model,
            choices=choices,
            usage=usage,
            call_key=self.call.key,
            replayed=replayed,
            latency_ms=latency_ms,
        )

    def live(self) -> PoolClient:
        """The pool to call on a miss (announced to listeners as ``call_start``).

        Journal rows still uncommitted (earlier calls) are committed now, in the
        writer's thread while this call runs: the job is about to pay again, and a crash
        during this call must not cost those twice.
        """
        model = self.model
        assert model.pool is not None  # __aenter__ raised JournalMiss otherwise
        model.tracer.writer.commit_soon()
        model.tracer.notify("call_start", {"role": model.name, "n": self.request.n})
        return model.pool

    def recorded(
        self,
        *,
        response: dict[str, Any],
        choices: list[Choice],
        usage: Usage,
        endpoint: str | None,
        latency_ms: float,
        attempts: list[Attempt],
        span: dict[str, Any],
    ) -> None:
        """Journal a live call with its span, before the strategy sees ``result``.

        Synchronous, so a cancellation (First Finish Search stopping a slower stream)
        cannot come between the call and its record."""
        model = self.model
        metrics.model_retries(model.name, model.model, attempts)
        self.usage = usage
        cost = model.cost(usage)
        response = {**response, **_usage_fields(usage, cost)}
        # The journal and the span are the tenant's to read: endpoints by position, never
        # by URL (the URL is the operator's: /v1/pools, the logs).
        assert model.pool is not None  # a live call
        endpoint = model.pool.public_endpoint(endpoint)
        entry = model.journal.new_entry(
            self.call,
            role=model.name,
            request=self.request,
            response=response,
            endpoint=endpoint,
            latency_ms=latency_ms,
            attempts=model.pool.public_attempts(attempts),
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cost=cost or 0.0,
        )
        self.result = self._generation(choices, usage, latency_ms)
        self.span.attributes = {
            **self.span.attributes,
            "journal": "miss",
            "endpoint": endpoint,
            "latency_ms": round(latency_ms, 3),
            "attempts": len(attempts),
            **span,
        }
        model._close(self.span, usage, cost)
        # On record before anything derived from the result can be: the row is queued
        # ahead of every span, event and outcome the strategy writes next, so no commit
        # holds those without it. It commits with the next of them that someone waits
        # for, in the background as soon as the job pays for another call or a tool
        # run (``_JournaledCall.live``), or with the job's outcome. A crash loses at most
        # the calls whose commit had not happened yet, and nothing built on them; a
        # `direct` job thus commits twice on a worker, claim and outcome (core.runner).
        model.tracer.writer.submit([entry, self.span])
        model.tracer.notify("call_end", {"role": model.name, "tokens": usage.completion_tokens})


class RoleStream:
    """What ``RoleModel.stream`` yields: iterate for deltas; ``result`` after the block."""

    def __init__(self) -> None:
        self.text = ""
        self.pieces: list[str] = []
        self.result: Generation | None = None
        self.finished = False
        self.finish_reason: str | None = None
        self.failure: BaseException | None = None
        self.out_of_time = False
        """The job's deadline stopped the stream (it is journaled as ``CANCELLED``)."""
        self._source: AsyncIterator[str] | None = None

    def __aiter__(self) -> AsyncIterator[str]:
        return self._deltas()

    async def _deltas(self) -> AsyncIterator[str]:
        assert self._source is not None, "iterate inside the 'async with' block"
        async for piece in self._source:
            self.text += piece
            self.pieces.append(piece)
            yield piece

    async def _live(
        self, pool_stream: PoolStream, out_of_time: Callable[[ModelTimeout], BudgetExhausted]
    ) -> AsyncIterator[str]:
        try:
            # aclosing: a consumer that leaves closes the HTTP response now, and the
            # attempt is on ``pool_stream.attempts`` before the call is journaled.
            async with contextlib.aclosing(pool_stream.__aiter__()) as deltas:
                async for delta in deltas:
                    if delta.finish_reason:
                        self.finish_reason = delta.finish_reason
                    if delta.text:
                        yield delta.text
            self.finished = True
        except ModelTimeout as exc:
            # Not a failure: the part received is the call's outcome, paid and journaled.
            self.out_of_time = True
            raise out_of_time(exc) from exc
        except ModelError as exc:
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
    reasoning = [Choice(index=0, text="", reasoning=pool_stream.reasoning or None)]
    if pool_stream.usage is not None and handle.finished:
        return wire.with_reasoning_estimate(pool_stream.usage, reasoning), finish, False
    # Stopped early: the server never sent its count. Each delta is one decoded token on
    # vLLM and llama.cpp (reasoning deltas too); the prompt is estimated at 4 characters
    # per token (flagged).
    prompt = pool_stream.usage.prompt_tokens if pool_stream.usage else request.prompt_chars() // 4
    usage = Usage(
        prompt_tokens=prompt,
        completion_tokens=pool_stream.deltas + pool_stream.reasoning_deltas,
        reasoning_tokens=pool_stream.reasoning_deltas,
    )
    return usage, finish, pool_stream.usage is None
