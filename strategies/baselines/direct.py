"""``direct``: one sample from one role — the baseline every other strategy is measured against.

When the caller streams (``conversation.stream``: the OpenAI face's ``stream: true``) the
call is streamed and each piece shown as it arrives (``ctx.show``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from strategies.protocol import (
    AnswerKind,
    BudgetExhausted,
    Context,
    Generation,
    ModelRequest,
    StrategyResult,
    role_field,
)
from strategies.shared.answer_kinds import Answers, response_of
from strategies.shared.prompts import solve_messages

ANSWER_KINDS: tuple[AnswerKind, ...] = ("number", "json", "tool_calls", "text")
"""One sample is its own answer, whatever its kind."""


class Params(BaseModel):
    """One call, greedy by default. Cost: 1 call, at most ``max_tokens`` generated tokens."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["direct"] = "direct"
    role: str = role_field(default="small", description="Model role to ask.")
    max_tokens: int = Field(default=512, ge=1, le=32768)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    system: str | None = Field(default=None, description="Replaces the default system prompt.")


async def run(problem: str, ctx: Context, params: Params) -> StrategyResult:
    request = ModelRequest(
        messages=solve_messages(problem, params.system, ctx.conversation),
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        seed=ctx.rng.randrange(2**31),
        **ctx.conversation.request_fields(),
    )
    try:
        if _streams(ctx):
            generation = await _streamed(ctx, params.role, request)
        else:
            generation = await ctx.models[params.role].generate(request)
    except BudgetExhausted:
        ctx.trace("budget_exhausted", best=None)
        return StrategyResult(answer=None, budget_exhausted=True)
    choice = generation.choices[0]
    answers, response = Answers.of(ctx.conversation), response_of(choice)
    answer = answers.answer(response)
    why_none = answers.problem(response) if answer is None else None
    ctx.trace("answer", answer=answer, finish_reason=choice.finish_reason,
              **({"problem": why_none} if why_none else {}))  # fmt: skip
    return StrategyResult(answer=answer, text=choice.text, tool_calls=list(response.calls) or None)


def _streams(ctx: Context) -> bool:
    """Stream when the caller reads tokens as they come and the text is the answer:
    not with tools (a call is not text) nor JSON (the answer sent is its canonical form)."""
    conversation = ctx.conversation
    return (
        conversation.stream
        and not conversation.tools
        and conversation.answer_kind
        in (
            "number",
            "text",
        )
    )


async def _streamed(ctx: Context, role: str, request: ModelRequest) -> Generation:
    async with ctx.models[role].stream(request) as stream:
        async for piece in stream:
            ctx.show(piece)
    assert stream.result is not None
    return stream.result
