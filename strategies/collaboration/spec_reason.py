"""``spec_reason``: the small model drafts each reasoning step, the large model judges it.

Pan, Dai, Zhang, Oliaro, Jia and Netravali, *SpecReason: Fast and Accurate
Inference-Time Compute via Speculative Reasoning* (2025, arXiv:2504.07891). Speculative
decoding at the level of reasoning steps: most steps are easy, a cheap model can write
them, and judging a step costs the large model one prefill and one token instead of a
whole step's decoding.

As implemented, one chain of reasoning grows a step at a time on a shared prefix
(``strategies.shared.collaboration``: each step continues the assistant message holding the
reasoning so far and stops at ``step_delimiter``, so prefix caching pays only new
tokens):
1. ``small_role`` drafts the next step (greedy by default, ``step_tokens`` at most).
2. ``large_role`` scores it with a single token, as in the paper: the chain including
   the draft stays the assistant's message, a user turn asks for the last step's score
   and the reply is prefilled with ``Score: `` so the next token is the digit. The
   paper's instruction ("evaluate the last reasoning step solely based on factual
   correctness and logical validity ... assign a score from 0 to 9") stands in the
   large role's system prompt instead of the user turn (``SCORE_RULE``): there it is
   part of the prefix the large server has cached, and each judgement prefills only the
   new step and ~15 tokens of question (measured on the embedded CPU models, prompt
   tokens cost a third to a half of a generated one). The score is the paper's
   "average" method: the expectation of the digit over the digit tokens among the
   ``judge_top_logprobs`` alternatives of that token (renormalised over the digits),
   source ``logprobs``; without logprobs the digit is parsed from the text
   (``parsed``); otherwise there is no score (``none``). ``judge: "yes_no"`` asks
   Yes/No instead and scores 9 × P(Yes) (``strategies.shared.scoring.yes_probability``) on
   the same 0-9 scale.
3. A score ``>= threshold`` accepts the draft; otherwise (or with no score) the large
   model writes that step itself from the same prefix and the draft is discarded. An
   empty draft (the small model would end here) is not judged: the large model decides.
4. Until a step states a final answer, a writer ends, or ``max_steps``. The answer is
   the one the chain states. With ``answer_role`` set (e.g. ``"large"``), a final step
   written by another role is rewritten by that role from the same prefix.

Pipelining (``pipeline``, on by default; the paper names it as the obvious next
optimisation): while the large model judges step k, the small model already drafts step
k+1 on top of the draft of step k, as if it will be accepted. Accepted, that draft is
ready when the judgement is; rejected, it is discarded (its tokens are charged to the
small role and traced) once it has finished, before the large model writes step k —
every call is then issued with no other call in flight except its partner, so budget
reservations, and so a replay's decisions, do not depend on timing. With greedy steps
the chain is exactly the sequential algorithm's; only the latency and the wasted drafts
differ. On the embedded CPU models judging costs a prefill of the new step plus the
instruction, about as long as drafting it, so overlapping the two is where the speed-up
comes from.

Cost per step: one small call (<= ``step_tokens``), one large judgement (1 generated
token; its prompt repeats the chain, of which a prefix-caching server prefills only the
new step and the ~15-token question), and for a rejected step one large call
(<= ``step_tokens``) plus, pipelined, one wasted small draft. At most ``max_steps``
steps. Usage shows the tokens per role.

Trace per step (inside a ``step`` span): ``draft`` (step, tokens, finish reason,
whether it was speculated during the previous judgement, text), ``judgement`` (step,
score, source, threshold), ``accept`` or ``reject`` (step, score, reason), ``discard``
(the speculative draft of the next step, its tokens), optionally ``final_answer``, then
``step`` (step, by, tokens, end); at the end ``final`` (answer, steps, steps per role,
end); ``budget_exhausted`` when the budget runs out (the answer is then the chain's so
far).
"""

from __future__ import annotations

import asyncio
import math
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from strategies.protocol import (
    BudgetExhausted,
    Choice,
    Context,
    Message,
    ModelRequest,
    StrategyResult,
    role_field,
)
from strategies.shared.collaboration import (
    STEP_DELIMITER,
    STEP_SYSTEM,
    Chain,
    Step,
    StepConfig,
    chain_result,
    draw_seed,
    final_step,
    run_step,
    step_messages,
    step_request,
    write_step,
)
from strategies.shared.scoring import judgement_position, parse_score, yes_probability

SCORE_RULE = (
    "When asked to score the last step, judge only its factual correctness and logical "
    "validity, not its style, and reply with one digit from 0 (wrong) to 9 (surely "
    "correct)."
)
YES_NO_RULE = (
    "When asked whether the last step is correct, judge only its factual correctness "
    "and logical validity, not its style, and reply Yes or No."
)
"""The judge's standing instruction, appended to the large role's system prompt: there
it is part of the prefix the large server has cached (its own steps use the same
system prompt), so each judgement prefills only the new step and the short question."""
SCORE_QUESTION = "Score the last step."
YES_NO_QUESTION = "Is the last step correct?"
SCORE_PREFILL = "Score: "
"""Prefilled reply: the next token is the digit (the paper prefills "the quality score
is: " likewise). The trailing space is a token of its own for Qwen's tokenizer, as it is
before a digit in running text."""
SCALE = 9.0

_DIGIT = re.compile(r"^[\s*_`]*([0-9])[\s*_`.]*$")
_FIRST_DIGIT = re.compile(r"[0-9]")


class Params(BaseModel):
    """Small drafts, large judges each step with one token; rejected steps go to large."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["spec_reason"] = "spec_reason"
    small_role: str = role_field(default="small", description="Model role that drafts steps.")
    large_role: str = role_field(
        default="large", description="Model role that judges drafts and writes rejected steps."
    )
    threshold: float = Field(
        default=7.0,
        ge=0.0,
        le=9.0,
        description="Accept a draft whose 0-9 score is at least this (the paper's default: 7).",
    )
    judge: Literal["score", "yes_no"] = Field(
        default="score",
        description="'score': a 0-9 utility score (the paper); 'yes_no': 9 x P(Yes).",
    )
    judge_top_logprobs: int = Field(
        default=10, ge=1, le=20, description="Alternatives read at the judgement token."
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
    pipeline: bool = Field(
        default=True,
        description="Draft the next step on the small model while the large model judges "
        "this one (same output, lower latency; a rejected step wastes that draft).",
    )
    answer_role: str | None = role_field(
        default=None,
        description="If set, only this role states the final answer: a final step by "
        "another role is rewritten by it.",
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
            role_systems=((self.large_role, self.judge_system()),),
        )

    def judge_system(self) -> str:
        """The large role's system prompt: the solver's, plus the judge's rule."""
        rule = SCORE_RULE if self.judge == "score" else YES_NO_RULE
        return f"{self.system or STEP_SYSTEM} {rule}"


@dataclass(frozen=True)
class Judgement:
    score: float | None
    """On the 0-9 scale; None when it could not be read."""
    source: Literal["logprobs", "parsed", "none"]


def digit_score(choice: Choice) -> Judgement:
    """Expected 0-9 score at the judgement token (the first that is not whitespace or
    markdown), over the digit tokens among its top alternatives; else the first digit
    of the text."""
    if choice.tokens:
        at = judgement_position(choice.tokens)
        if at is not None:
            token = choice.tokens[at]
            pairs = list(token.top) or [(token.token, token.logprob)]
            if all(t != token.token for t, _ in pairs):
                pairs.insert(0, (token.token, token.logprob))
            digits = [(int(m.group(1)), math.exp(lp)) for t, lp in pairs if (m := _DIGIT.match(t))]
            mass = sum(p for _, p in digits)
            if mass > 0:
                return Judgement(sum(d * p for d, p in digits) / mass, "logprobs")
    found = _FIRST_DIGIT.search(choice.text)
    if found:
        return Judgement(float(found.group()), "parsed")
    return Judgement(None, "none")


def yes_no_score(choice: Choice) -> Judgement:
    p_yes = yes_probability(choice)
    if p_yes is not None:
        return Judgement(SCALE * p_yes, "logprobs")
    parsed = parse_score(choice.text)
    if parsed is not None:
        return Judgement(SCALE * parsed, "parsed")
    return Judgement(None, "none")


def judge_messages(problem: str, reasoning: str, params: Params) -> list[Message]:
    """The chain with the draft as the assistant's message, then the question. Starting
    with the same messages as the large role's step requests lets its server reuse its
    cache."""
    messages = step_messages(problem, reasoning, params.judge_system())
    if params.judge == "score":
        return [
            *messages,
            {"role": "user", "content": SCORE_QUESTION},
            {"role": "assistant", "content": SCORE_PREFILL},
        ]
    return [*messages, {"role": "user", "content": YES_NO_QUESTION}]


def judge_request(problem: str, chain: Chain, draft: Step, params: Params) -> ModelRequest:
    return ModelRequest(
        messages=judge_messages(problem, (chain.prefill + draft.text).rstrip(), params),
        max_tokens=1,
        temperature=0.0,
        logprobs=True,
        top_logprobs=params.judge_top_logprobs,
        continue_final_message=params.judge == "score",
    )


async def judge_draft(ctx: Context, request: ModelRequest, params: Params) -> Judgement:
    generation = await ctx.models[params.large_role].generate(request)
    choice = generation.choices[0]
    return digit_score(choice) if params.judge == "score" else yes_no_score(choice)


Drafting = asyncio.Task[tuple[Step, Choice]]


async def settle(task: Drafting | None) -> Step | None:
    """Wait for a speculative draft nobody needs (no call is left running, and the
    journal stays complete for replay); None if the budget could not pay for it."""
    if task is None:
        return None
    try:
        step, _ = await task
    except BudgetExhausted:
        return None
    return step


async def next_step(
    ctx: Context,
    problem: str,
    chain: Chain,
    params: Params,
    counts: dict[str, int],
    pending: Drafting | None,
) -> tuple[Step, Drafting | None]:
    """Draft (or take the draft speculated during the previous judgement), judge, and
    accept it or have the large model write the step. Returns the step and, if the
    draft was accepted and ``pipeline`` is on, the task drafting the step after it."""
    index = chain.steps
    config = params.step_config()
    speculative = pending is not None
    if pending is not None:
        draft, _ = await pending
    else:
        draft, _ = await write_step(ctx, params.small_role, problem, chain.prefill, config)
    ctx.trace(
        "draft",
        step=index,
        tokens=draft.tokens,
        finish_reason=draft.finish_reason,
        speculative=speculative,
        text=draft.text[:300],
    )
    if not draft.text.strip() and draft.finish_reason != "length":
        counts["rejected"] += 1
        ctx.trace("reject", step=index, score=None, reason="empty_draft")
        step, _ = await write_step(ctx, params.large_role, problem, chain.prefill, config)
        return step, None

    # Both requests are built (and any seed drawn) before either is sent, so the
    # journal sees the same calls in the same order on replay.
    verdict_request = judge_request(problem, chain, draft, params)
    if_accepted = chain.extend(draft, config)
    ahead: Drafting | None = None
    if params.pipeline and not if_accepted.finished:
        ahead_request = step_request(
            problem,
            if_accepted.prefill,
            config,
            role=params.small_role,
            seed=draw_seed(ctx, config),
        )
        judging = asyncio.ensure_future(judge_draft(ctx, verdict_request, params))
        ahead = asyncio.ensure_future(run_step(ctx, params.small_role, ahead_request))
        try:
            verdict = await judging
        except BudgetExhausted:
            await settle(ahead)
            raise
        except BaseException:  # the job is failing or cancelled: stop the draft too
            ahead.cancel()
            raise
    else:
        verdict = await judge_draft(ctx, verdict_request, params)

    score = None if verdict.score is None else round(verdict.score, 4)
    ctx.trace(
        "judgement", step=index, score=score, source=verdict.source, threshold=params.threshold
    )
    if verdict.score is not None and verdict.score >= params.threshold:
        counts["accepted"] += 1
        ctx.trace("accept", step=index, score=score)
        return draft, ahead
    counts["rejected"] += 1
    reason = "unreadable" if verdict.score is None else "below_threshold"
    ctx.trace("reject", step=index, score=score, reason=reason)
    # The speculative draft started with the judgement and is usually done by now.
    # Waiting for it keeps every call's budget reservation independent of timing, so a
    # replay under a tight budget makes the same decisions.
    wasted = await settle(ahead)
    if wasted is not None:
        counts["discarded_tokens"] += wasted.tokens
        ctx.trace("discard", step=index + 1, tokens=wasted.tokens)
    step, _ = await write_step(ctx, params.large_role, problem, chain.prefill, config)
    return step, None


async def run(problem: str, ctx: Context, params: Params) -> StrategyResult:
    config = params.step_config()
    chain = Chain()
    counts = {"accepted": 0, "rejected": 0, "discarded_tokens": 0}
    pending: Drafting | None = None
    exhausted = False
    try:
        while not chain.finished:
            index = chain.steps
            async with ctx.span("step", index=index):
                step, pending = await next_step(ctx, problem, chain, params, counts, pending)
                step = await final_step(ctx, problem, chain, step, config, index)
                chain = chain.extend(step, config)
                ctx.trace("step", step=index, by=step.role, tokens=step.tokens, end=chain.end)
    except BudgetExhausted as exc:
        exhausted = True
        await settle(pending)
        ctx.trace("budget_exhausted", what=exc.what, steps=chain.steps, answer=chain.answer)
    except BaseException:
        if pending is not None:
            pending.cancel()
        raise
    return chain_result(ctx, chain, exhausted=exhausted, **counts)
