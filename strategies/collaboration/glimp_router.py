"""``glimp_router``: route each reasoning step by the entropy of its first token.

Zeng, Zhang, Shi, Hu, Chen, Shen and Gu, *GlimpRouter: Efficient Collaborative Inference
by Glimpsing One Token of Thoughts* (2026, arXiv:2601.05110). A step whose first token
the small model is unsure about (high initial-token entropy: a pivot, a new idea) is
hard and goes to the large model; a step it starts confidently is routine and the small
model writes it. Probe-then-dispatch: the decision costs one small-model token per step
instead of a whole draft to verify.

As implemented, one chain grows a step at a time on a shared prefix
(``strategies.shared.collaboration``):
1. Glimpse: ``small_role`` generates only the step's first token (``max_tokens=1``,
   greedy, ``top_logprobs``), continuing the chain so far.
2. Its entropy H in nats is read from the top alternatives, renormalised over them
   (``strategies.shared.scoring.first_token_entropy``; the paper uses the full vocabulary,
   which an OpenAI-compatible server does not return — with 20 alternatives the
   difference is the tail's mass).
3. H > ``tau``: ``large_role`` writes the whole step from the same prefix (the glimpsed
   token is dropped, as in the paper: the large model must be free to start the step
   differently). Otherwise the small model writes it, *continuing from its glimpsed
   token* (prefill = chain + token, ``step_tokens - 1`` more), so the token is neither
   generated nor paid twice; on a prefix-caching server the continuation prefills one
   token. A glimpse that already ended the step (it hit the delimiter or the end of
   sequence) is the whole step. A glimpse without logprobs cannot be judged and goes
   to the large model.
4. Until a step states a final answer, a writer ends, or ``max_steps``. As in the
   paper, the large model writes the conclusion: with ``answer_role`` (default
   ``"large"``) a final step written by the small model is rewritten by that role from
   the same prefix (a short step: "The answer is N."); ``answer_role: null`` keeps the
   small model's conclusion (faster, less safe).

Cost per step: one 1-token small call, then either one small call (<= ``step_tokens - 1``)
or one large call (<= ``step_tokens``); plus possibly one large final step. Usage shows
the tokens per role.

Trace per step (inside a ``step`` span): ``route`` (step, entropy, tau, to, token),
optionally ``final_answer``, then ``step`` (step, by, tokens, end); at the end ``final``
(answer, steps, steps per role, end); ``budget_exhausted`` when the budget runs out (the
answer is then the chain's so far).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from strategies.protocol import BudgetExhausted, Context, StrategyResult, role_field
from strategies.shared.collaboration import (
    STEP_DELIMITER,
    Chain,
    Step,
    StepConfig,
    chain_result,
    final_step,
    write_step,
)
from strategies.shared.scoring import first_token_entropy


class Params(BaseModel):
    """The small model glimpses each step's first token; uncertain steps go to large."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["glimp_router"] = "glimp_router"
    small_role: str = role_field(
        default="small", description="Model role that glimpses and writes easy steps."
    )
    large_role: str = role_field(default="large", description="Model role that writes hard steps.")
    tau: float = Field(
        default=1.0,
        ge=0.0,
        le=10.0,
        description="Entropy threshold in nats: a step whose first token is more "
        "uncertain goes to the large model.",
    )
    top_logprobs: int = Field(
        default=20, ge=2, le=20, description="Alternatives of the first token read for H."
    )
    step_delimiter: str = Field(
        default=STEP_DELIMITER, min_length=1, description="Text that ends a step."
    )
    step_tokens: int = Field(default=128, ge=1, le=4096, description="Most tokens per step.")
    max_steps: int = Field(default=16, ge=1, le=256, description="Most steps in the chain.")
    temperature: float = Field(
        default=0.0, ge=0.0, le=2.0, description="Sampling temperature of the steps."
    )
    top_p: float | None = Field(
        default=None, gt=0.0, le=1.0, description="Nucleus sampling of the steps."
    )
    answer_role: str | None = role_field(
        default="large",
        description="Only this role states the final answer (the paper: the large "
        "model concludes); null keeps whoever wrote the final step.",
    )
    system: str | None = Field(default=None, description="Replaces the default system prompt.")

    def step_config(self) -> StepConfig:
        return StepConfig(
            delimiter=self.step_delimiter,
            max_tokens=self.step_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            system=self.system,
            max_steps=self.max_steps,
            answer_role=self.answer_role,
        )


async def routed_step(
    ctx: Context, problem: str, chain: Chain, params: Params
) -> tuple[Step, bool]:
    """Glimpse the first token, decide, and have the chosen role write the step.
    Returns the step and whether it was routed to the large model."""
    index = chain.steps
    config = params.step_config()
    # The glimpse is greedy whatever the step temperature: the decision must not depend
    # on a sampled token, and the distribution it measures is the same.
    glimpse_config = replace(config, temperature=0.0, top_p=None)
    glimpse, choice = await write_step(
        ctx,
        params.small_role,
        problem,
        chain.prefill,
        glimpse_config,
        max_tokens=1,
        top_logprobs=params.top_logprobs,
    )
    entropy = first_token_entropy(choice)
    hard = entropy is None or entropy > params.tau
    ctx.trace(
        "route",
        step=index,
        entropy=None if entropy is None else round(entropy, 4),
        tau=params.tau,
        to=params.large_role if hard else params.small_role,
        token=glimpse.text,
    )
    if hard:
        step, _ = await write_step(ctx, params.large_role, problem, chain.prefill, config)
        return step, True
    if glimpse.finish_reason != "length" or params.step_tokens == 1:
        return glimpse, False  # the glimpse is the whole step
    rest, _ = await write_step(
        ctx,
        params.small_role,
        problem,
        chain.prefill + glimpse.text,
        config,
        max_tokens=params.step_tokens - 1,
    )
    step = Step(
        glimpse.text + rest.text,
        params.small_role,
        glimpse.tokens + rest.tokens,
        rest.finish_reason,
    )
    return step, False


async def run(problem: str, ctx: Context, params: Params) -> StrategyResult:
    config = params.step_config()
    chain = Chain()
    routed = {"to_small": 0, "to_large": 0}
    exhausted = False
    try:
        while not chain.finished:
            index = chain.steps
            async with ctx.span("step", index=index):
                step, hard = await routed_step(ctx, problem, chain, params)
                routed["to_large" if hard else "to_small"] += 1
                step = await final_step(ctx, problem, chain, step, config, index)
                chain = chain.extend(step, config)
                ctx.trace("step", step=index, by=step.role, tokens=step.tokens, end=chain.end)
    except BudgetExhausted as exc:
        exhausted = True
        ctx.trace("budget_exhausted", what=exc.what, steps=chain.steps, answer=chain.answer)
    return chain_result(ctx, chain, exhausted=exhausted, **routed)
