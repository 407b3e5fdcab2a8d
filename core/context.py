"""The strategy ``Context`` as core implements it: journaled, budgeted, traced model roles.

One model call, in order: reserve budget (may lower max_tokens) -> assign the journal
key -> open the model_call span -> journal hit? answer from it : (strict? fail : call the
pool, then write journal row + span in one transaction) -> settle the budget -> return.
Everything before the first ``await`` is synchronous, which is what makes keys, span
sequence numbers and reservations follow program order under concurrent fan-out.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from pydantic import BaseModel

from core.budget import JobBudget
from core.errors import JournalMiss
from core.journal import Journal
from core.pools.client import PoolClient, PoolResult
from core.trace import Tracer, now
from strategies.protocol import (
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

    async def generate(self, request: ModelRequest) -> Generation:
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
        call = self.journal.issue(self.name, self.model, request)
        span = self.tracer.new_span(
            "model_call",
            f"{self.name}.generate",
            {"role": self.name, "model": self.model, "key": call.key[:16], "n": request.n},
        )
        usage: Usage | None = None
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
                self.tracer.writer.submit([span])
                return Generation(
                    role=self.name,
                    model=self.model,
                    choices=choices,
                    usage=usage,
                    call_key=call.key,
                    replayed=True,
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
            )
        except BaseException as exc:
            if span.end_ts is None:
                span.attributes = {**span.attributes, "error": f"{type(exc).__name__}: {exc}"}
                span.end_ts = now()
                self.tracer.writer.submit([span])
            raise
        finally:
            self.budget.settle(reservation, usage, self.cost(usage) if usage else 0.0)

    def _close(self, span: Any, usage: Usage, cost: float) -> None:
        span.end_ts = now()
        span.prompt_tokens = usage.prompt_tokens
        span.completion_tokens = usage.completion_tokens
        span.cost = cost


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
