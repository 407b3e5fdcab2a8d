"""``budget_forcing``: hold the thinking between a minimum and a maximum length (s1).

Muennighoff et al., *s1: Simple test-time scaling* (2025). The thinking is generated with
``stop=["</think>"]``. When it ends (at the marker or by the model stopping) before
``min_thinking_tokens``, the end is suppressed: the continuation cue (``"Wait"``) is
appended to the thinking and generation continues from there — at most
``max_extensions`` times (traced ``extended`` with the tokens so far). When the thinking
reaches ``max_thinking_tokens`` it is ended by the client (``forced_end``). Then the answer
is generated within ``answer_tokens``, as in ``elastic``.

Token counts are the completion tokens the server charged; the cue is the client's text,
not generated, and does not count. Each thinking call asks for what is left of
``max_thinking_tokens`` (and, under a job budget, no more than leaves ``answer_tokens`` for
the answer: ``thinking_clamped``). Prompts and prefills: ``strategies.shared.thinking``.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from strategies.protocol import BudgetExhausted, Context, StrategyResult, role_field
from strategies.shared.thinking import (
    ThinkFormat,
    answer_after_thinking,
    append_cue,
    think,
    think_messages,
    thinking_allowance,
)


class Params(BaseModel):
    """Think at least ``min_thinking_tokens`` (appending the cue to an early end) and at
    most ``max_thinking_tokens``, then answer within ``answer_tokens``.
    Cost: 2 to ``max_extensions + 2`` calls, at most ``max_thinking_tokens + answer_tokens``
    generated tokens."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["budget_forcing"] = "budget_forcing"
    role: str = role_field(default="small", description="Model role that thinks and answers.")
    min_thinking_tokens: int = Field(
        default=128, ge=0, le=32768, description="An earlier end of thinking is suppressed."
    )
    max_thinking_tokens: int = Field(
        default=512, ge=1, le=32768, description="The thinking is ended here."
    )
    continuation_cue: str = Field(
        default="Wait", min_length=1, description="Appended to the thinking to extend it."
    )
    max_extensions: int = Field(
        default=2, ge=0, le=64, description="Most times an early end is suppressed."
    )
    answer_tokens: int = Field(default=128, ge=1, le=32768, description="Answer phase budget.")
    format: ThinkFormat = Field(
        default="instruct",
        description="'instruct': a system prompt asks for `<think>...</think>` then "
        "'The answer is N.'; 'reasoning': for models that think in `<think>` natively.",
    )
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    system: str | None = Field(default=None, description="Replaces the default system prompt.")

    @model_validator(mode="after")
    def _min_within_max(self) -> Self:
        if self.min_thinking_tokens > self.max_thinking_tokens:
            raise ValueError(
                f"min_thinking_tokens ({self.min_thinking_tokens}) must not exceed "
                f"max_thinking_tokens ({self.max_thinking_tokens})"
            )
        return self


async def run(problem: str, ctx: Context, params: Params) -> StrategyResult:
    model = ctx.models[params.role]
    messages = think_messages(problem, params.format, params.system)
    thinking = ""
    used = 0
    extensions = 0
    forced = False
    exhausted = False

    while True:
        wanted = params.max_thinking_tokens - used
        allowance = thinking_allowance(ctx, wanted, params.answer_tokens)
        if allowance < wanted:
            ctx.trace(
                "thinking_clamped",
                asked=wanted,
                granted=allowance,
                kept_for_answer=params.answer_tokens,
            )
        if allowance <= 0:
            forced = True
            break
        try:
            thought = await think(
                ctx,
                model,
                messages,
                thinking,
                max_tokens=allowance,
                temperature=params.temperature,
                top_p=params.top_p,
            )
        except BudgetExhausted as exc:
            ctx.trace("budget_exhausted", what=exc.what, phase="thinking", tokens=used)
            if not thinking:
                return StrategyResult(answer=None, budget_exhausted=True)
            forced = exhausted = True
            break
        thinking += thought.text
        used += thought.tokens
        if thought.hit_limit:
            forced = True
            break
        if used >= params.min_thinking_tokens or extensions >= params.max_extensions:
            break
        thinking = append_cue(thinking, params.continuation_cue)
        extensions += 1
        ctx.trace("extended", tokens=used, extension=extensions, cue=params.continuation_cue)

    if forced:
        ctx.trace("forced_end", tokens=used, budget=params.max_thinking_tokens)
    else:
        ctx.trace("thinking_end", tokens=used, extensions=extensions)

    result = await answer_after_thinking(
        ctx,
        model,
        messages,
        thinking,
        max_tokens=params.answer_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
    )
    result.budget_exhausted = result.budget_exhausted or exhausted
    result.details = {
        "thinking_tokens": used,
        "extensions": extensions,
        "forced_end": forced,
        **result.details,
    }
    return result
