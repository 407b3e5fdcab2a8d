"""``first_finish``: sample ``n`` traces at once, keep the first to finish, stop the rest.

Agarwal et al., *First Finish Search: Efficient Test-Time Scaling in Large Language
Models* (arXiv 2025). The paper's observation: among parallel samples of one reasoning
model, the shorter traces are more often correct, so the trace that finishes decoding
first is a good pick — and once it is there, the others need not be paid to the end.

As implemented:
1. ``n`` seeds are drawn, then ``n`` streamed calls to ``role`` are opened together (one
   task each, all issued before the first await, so journal keys and budget
   reservations follow sample order).
2. Each time a stream ends, it is judged: a *finisher* is accepted unless it was cut at
   ``max_tokens`` (``finish_reason == "length"``: the trace did not finish, it was
   stopped), it has fewer than ``min_tokens`` tokens (a degenerate early stop; 0, the
   paper's setting, accepts any length), or — with ``skip_unanswered`` — no answer can
   be extracted from it (then the race goes on for the next finisher).
3. At the first accepted finisher every other stream is cancelled: each cancelled call is
   journaled with its partial text and charged for the tokens it had produced.
4. The winner is chosen from what the calls recorded, never from arrival order: among
   the streams that were not cancelled, the accepted one with the smallest call latency
   (ties: lowest index). Live, that is the finisher that stopped the race (or one that
   finished in the same instant); on replay, where every recorded stream comes back at
   once, the same rule on the same records gives the same winner.
5. No accepted finisher at all: the earliest finisher with an extractable answer wins
   (``reason="fallback"``); none with an answer: no answer (``reason="none"``).

Cost: ``n`` calls reserving ``max_tokens`` each; charged about ``n`` × the winner's
length (the losers decode in parallel until the winner ends) instead of ``n`` × the mean
length. Wall time is that of the shortest acceptable trace.

Trace: ``budget_exhausted`` (samples launched) when not all ``n`` calls could be paid;
``finished`` per stream that ended on its own, in finishing order (index, tokens, answer,
finish reason, latency, accepted, skipped: why not); ``cancelled`` per stopped stream
(index, partial tokens); ``winner`` (index, answer, tokens, reason).
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from strategies.protocol import (
    CANCELLED,
    BudgetExhausted,
    Context,
    Generation,
    ModelRequest,
    StrategyResult,
    TokenStream,
    role_field,
)
from strategies.shared.answers import extract_answer
from strategies.shared.prompts import solve_messages


class Params(BaseModel):
    """Race ``n`` streamed samples; the first acceptable finisher wins."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["first_finish"] = "first_finish"
    role: str = role_field(default="small", description="Model role that samples.")
    n: int = Field(default=4, ge=1, le=64, description="Samples raced in parallel.")
    max_tokens: int = Field(default=512, ge=1, le=32768, description="Per sample.")
    temperature: float = Field(
        default=0.7, ge=0.0, le=2.0, description="Sampling temperature (samples must differ)."
    )
    top_p: float | None = Field(default=0.95, gt=0.0, le=1.0, description="Nucleus sampling.")
    min_tokens: int = Field(
        default=0,
        ge=0,
        description="A finisher with fewer tokens than this does not win (0: any length).",
    )
    skip_unanswered: bool = Field(
        default=True,
        description="A finisher with no extractable answer does not win; wait for the next.",
    )
    system: str | None = Field(default=None, description="Replaces the default system prompt.")

    @field_validator("min_tokens")
    @classmethod
    def _below_max_tokens(cls, value: int, info: ValidationInfo) -> int:
        max_tokens = info.data.get("max_tokens")
        if max_tokens is not None and value > max_tokens:
            raise ValueError(f"must be at most max_tokens ({max_tokens})")
        return value


@dataclass(frozen=True)
class Sample:
    index: int
    generation: Generation
    answer: str | None

    @property
    def finish_reason(self) -> str | None:
        return self.generation.choices[0].finish_reason

    @property
    def tokens(self) -> int:
        return self.generation.usage.completion_tokens

    @property
    def order(self) -> tuple[float, int]:
        """Finishing order as recorded: call latency, then index."""
        latency = self.generation.latency_ms
        return (latency if latency is not None else math.inf, self.index)


def skip_reason(sample: Sample, params: Params) -> str | None:
    """Why a stream that ended cannot win, or None if it is an accepted finisher."""
    if sample.finish_reason == CANCELLED:
        return "cancelled"
    if sample.finish_reason == "length":
        return "truncated"
    if sample.tokens < params.min_tokens:
        return "too_short"
    if params.skip_unanswered and sample.answer is None:
        return "no_answer"
    return None


def _sample(index: int, generation: Generation) -> Sample:
    return Sample(index, generation, extract_answer(generation.choices[0].text))


class _Race:
    """``n`` streams run to their end unless cancelled; remembers every handle."""

    def __init__(self, ctx: Context, params: Params, requests: list[ModelRequest]) -> None:
        self.model = ctx.models[params.role]
        self.params = params
        self.requests = requests
        self.streams: list[TokenStream | None] = [None] * len(requests)
        self.unpaid: list[str] = []
        """What ran out (``BudgetExhausted.what``) for each sample that could not start."""
        self.all_open = asyncio.Event()

    async def one(self, index: int) -> Generation | None:
        try:
            async with self.model.stream(self.requests[index]) as stream:
                self.streams[index] = stream
                # No stream is read before all are open (their budget reserved): a
                # replayed stream ends without a pause and would otherwise hand its
                # unused reservation back before the next sample asks for one.
                await self.all_open.wait()
                async for _ in stream:
                    pass
        except BudgetExhausted as exc:
            self.unpaid.append(exc.what)
            return None
        return stream.result

    def accepted(self, task: asyncio.Task[Generation | None], index: int) -> bool:
        if task.cancelled() or task.exception() is not None:
            return False
        generation = task.result()
        return (
            generation is not None and skip_reason(_sample(index, generation), self.params) is None
        )

    async def run(self) -> list[Sample]:
        tasks = [asyncio.create_task(self.one(i)) for i in range(len(self.requests))]
        index_of = {task: i for i, task in enumerate(tasks)}
        try:
            # Every task opens its stream (journal key, reservation) in sample order
            # before any can end or be cancelled: a replay must issue the same calls.
            await asyncio.sleep(0)
            self.all_open.set()
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                failed = any(not t.cancelled() and t.exception() is not None for t in done)
                if failed or any(self.accepted(t, index_of[t]) for t in done):
                    break
        finally:
            # Losers (and, if the job itself is cancelled, everyone) are stopped; their
            # partial calls are journaled before the tasks end.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error
        samples = []
        for i, stream in enumerate(self.streams):
            if stream is not None and stream.result is not None:
                samples.append(_sample(i, stream.result))
        return samples


def finishers(samples: list[Sample]) -> list[Sample]:
    """The streams that ended on their own, in recorded finishing order."""
    return sorted((s for s in samples if s.finish_reason != CANCELLED), key=lambda s: s.order)


def choose(samples: list[Sample], params: Params) -> tuple[Sample | None, str]:
    """The winner among recorded outcomes, and why (first_finish, fallback or none)."""
    ended = finishers(samples)
    for sample in ended:
        if skip_reason(sample, params) is None:
            return sample, "first_finish"
    for sample in ended:
        if sample.answer is not None:
            return sample, "fallback"
    return None, "none"


async def run(problem: str, ctx: Context, params: Params) -> StrategyResult:
    messages = solve_messages(problem, params.system, ctx.conversation)
    # All seeds before the first await: the calls' keys do not depend on timing.
    requests = [
        ModelRequest(
            messages=messages,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=ctx.rng.randrange(2**31),
        )
        for _ in range(params.n)
    ]
    race = _Race(ctx, params, requests)
    samples = await race.run()
    exhausted = bool(race.unpaid)
    if exhausted:
        ctx.trace("budget_exhausted", what=race.unpaid[0], launched=params.n - len(race.unpaid))

    for sample in finishers(samples):
        skipped = skip_reason(sample, params)
        latency = sample.generation.latency_ms
        ctx.trace(
            "finished",
            index=sample.index,
            tokens=sample.tokens,
            answer=sample.answer,
            finish_reason=sample.finish_reason,
            latency_ms=round(latency, 1) if latency is not None else None,
            accepted=skipped is None,
            skipped=skipped,
        )
    cancelled = [s for s in samples if s.finish_reason == CANCELLED]
    for sample in cancelled:
        ctx.trace("cancelled", index=sample.index, tokens=sample.tokens)

    winner, reason = choose(samples, params)
    ctx.trace(
        "winner",
        index=winner.index if winner else None,
        answer=winner.answer if winner else None,
        tokens=winner.tokens if winner else None,
        reason=reason,
    )
    return StrategyResult(
        answer=winner.answer if winner else None,
        text=winner.generation.choices[0].text if winner else "",
        budget_exhausted=exhausted,
        details={
            "winner": winner.index if winner else None,
            "reason": reason,
            "launched": len(samples),
            "cancelled": len(cancelled),
            "tokens": sum(s.tokens for s in samples),
        },
    )
