"""``elastic``: separate budgets for thinking and for the answer (Elastic Reasoning).

Xu et al., *Scalable Chain of Thoughts via Elastic Reasoning* (2025). Reasoning is split
into a thinking phase with budget ``thinking_tokens`` (t) and an answer phase with budget
``answer_tokens`` (s). If the thinking reaches t before it ends by itself, the client
closes it (``</think>``) and the answer is still generated within its own s tokens — so a
long chain of thought can never starve the answer, and the total is at most t + s.

Calls (see ``strategies.shared.thinking`` for the exact prompts and prefills):
1. continue the assistant message ``<think>\\n``, ``stop=["</think>"]``,
   ``max_tokens = t``: traced ``thinking_end`` (ended by itself) or ``forced_end`` (hit t);
2. continue ``<think>\\n{thinking}\\n</think>\\n\\n`` with ``max_tokens = s``: ``answer``.

Under a job token budget, the thinking call asks for at most what leaves s tokens for the
answer (``thinking_clamped``); with nothing left for thinking it is skipped and the answer
is generated straight after an empty ``<think></think>``. If the answer text states no
answer, the answer found in the thinking is used (``answer_from_thinking``). Controls a
server ignored are traced as ``control_ignored``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from strategies.protocol import BudgetExhausted, Context, StrategyResult, role_field
from strategies.shared.thinking import (
    ThinkFormat,
    Thought,
    answer_after_thinking,
    think,
    think_messages,
    thinking_allowance,
)


class Params(BaseModel):
    """Think within ``thinking_tokens``, then answer within ``answer_tokens``.
    Cost: 2 calls, at most ``thinking_tokens + answer_tokens`` generated tokens."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["elastic"] = "elastic"
    role: str = role_field(default="small", description="Model role that thinks and answers.")
    thinking_tokens: int = Field(
        default=512, ge=1, le=32768, description="Budget of the thinking phase (t)."
    )
    answer_tokens: int = Field(
        default=128, ge=1, le=32768, description="Budget of the answer phase (s), kept apart."
    )
    format: ThinkFormat = Field(
        default="instruct",
        description="'instruct': a system prompt asks for `<think>...</think>` then "
        "'The answer is N.'; 'reasoning': for models that think in `<think>` natively.",
    )
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    system: str | None = Field(default=None, description="Replaces the default system prompt.")


async def run(problem: str, ctx: Context, params: Params) -> StrategyResult:
    model = ctx.models[params.role]
    messages = think_messages(problem, params.format, params.system)
    allowance = thinking_allowance(ctx, params.thinking_tokens, params.answer_tokens)
    if allowance < params.thinking_tokens:
        ctx.trace(
            "thinking_clamped",
            asked=params.thinking_tokens,
            granted=allowance,
            kept_for_answer=params.answer_tokens,
        )
    thought = Thought("", 0, "length")
    if allowance > 0:
        try:
            thought = await think(
                ctx,
                model,
                messages,
                "",
                max_tokens=allowance,
                temperature=params.temperature,
                top_p=params.top_p,
            )
        except BudgetExhausted as exc:
            ctx.trace("budget_exhausted", what=exc.what, phase="thinking")
            return StrategyResult(answer=None, budget_exhausted=True)
    if thought.hit_limit:
        ctx.trace("forced_end", tokens=thought.tokens, budget=allowance)
    else:
        ctx.trace("thinking_end", tokens=thought.tokens)

    result = await answer_after_thinking(
        ctx,
        model,
        messages,
        thought.text,
        max_tokens=params.answer_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
    )
    result.details = {
        "thinking_tokens": thought.tokens,
        "forced_end": thought.hit_limit,
        **result.details,
    }
    return result
