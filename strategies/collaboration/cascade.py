"""``cascade``: answer with the small model; escalate to the large one when it is unsure.

Yue, Zhao, Zhang, Du and Yao, *Large Language Model Cascades with Mixture of Thought
Representations for Cost-Efficient Reasoning* (ICLR 2024): sample several answers from
the weaker, cheaper model; if they agree (the majority answer's vote share reaches a
threshold), keep it; otherwise pay for the stronger model. Answer consistency is the
paper's signal; a confidence signal (the sampled tokens' probability) is the classic
alternative in cascades and is offered as a second, optional trigger.

As implemented:
1. Small stage: ``samples`` answers in one call on ``small_role`` (temperature
   ``temperature``), or any child strategy (``small``, e.g. adaptive
   ``self_consistency``). Its agreement is the leader's vote share among all samples
   (samples without an answer count against it); a child that reports no votes counts
   as one vote for its answer.
2. Confidence (built-in stage only, when the server returns logprobs): the geometric
   mean token probability, exp(mean token logprob), over the tokens of the samples that
   voted for the leader.
3. Escalate when there is no answer, when agreement < ``min_agreement``, or when
   ``min_confidence`` is set and confidence < it; otherwise accept the small answer.
4. Large stage: one greedy answer on ``large_role``, or a child strategy (``large``).
   With ``share_attempts`` the large stage sees the small model's attempts (one
   solution per distinct answer, most votes first, at most three) after the problem,
   marked as possibly wrong. If the large stage gives no answer, the small leader stands.

Cost: the small stage (``samples`` × ``max_tokens`` at most, or the child's cost), and
for escalated problems the large stage (one call of ``max_tokens``, or the child's).

Trace: ``sample`` per built-in sample (index, answer, confidence), ``agreement`` (share,
votes, samples, threshold), ``confidence`` (value, source, threshold) when available,
``escalate`` (reason, answer) or ``accept`` (answer), ``answer`` for the built-in large
stage, ``final`` (answer, from); child strategies trace in their own spans;
``budget_exhausted`` when the budget runs out (best answer so far).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from strategies.compose import ChildSpec
from strategies.protocol import BudgetExhausted, Context, ModelRequest, StrategyResult, role_field
from strategies.shared.answers import extract_answer
from strategies.shared.prompts import solve_messages
from strategies.shared.scoring import path_probability

ATTEMPTS_NOTE = (
    "\n\nA smaller model attempted this problem first. Its attempts may be wrong; check "
    "them and solve the problem yourself.\n\n{attempts}"
)
MAX_SHARED = 3


class Params(BaseModel):
    """Small model first; escalate to the large model on disagreement or low confidence."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["cascade"] = "cascade"
    small_role: str = role_field(default="small", description="Model role of the first stage.")
    large_role: str = role_field(default="large", description="Model role escalated to.")
    small: ChildSpec | None = Field(
        default=None,
        description="Child strategy of the first stage; None samples `samples` answers "
        "from small_role.",
    )
    large: ChildSpec | None = Field(
        default=None,
        description="Child strategy run on escalation; None asks large_role once, greedily.",
    )
    samples: int = Field(
        default=4, ge=1, le=64, description="Answers sampled by the built-in first stage."
    )
    temperature: float = Field(
        default=0.7, ge=0.0, le=2.0, description="Sampling temperature of the first stage."
    )
    max_tokens: int = Field(
        default=512, ge=1, le=32768, description="Per built-in sample and large answer."
    )
    min_agreement: float = Field(
        default=0.75,
        ge=0.0,
        le=1.0,
        description="Escalate when the leader's vote share is below this.",
    )
    min_confidence: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="Escalate when exp(mean token logprob) of the leader's samples is "
        "below this (built-in stage, needs logprobs); None: agreement only.",
    )
    share_attempts: bool = Field(
        default=False, description="Show the small model's attempts to the large stage."
    )
    system: str | None = Field(default=None, description="Replaces the default system prompt.")


@dataclass
class SmallOutcome:
    answer: str | None
    votes: dict[str, int]
    samples: int
    texts: dict[str, str] = field(default_factory=dict)
    """One solution per distinct answer (the first that gave it)."""
    confidence: float | None = None
    exhausted: bool = False

    @property
    def share(self) -> float:
        if self.answer is None or self.samples == 0:
            return 0.0
        return self.votes[self.answer] / self.samples


async def sample_small(problem: str, ctx: Context, params: Params) -> SmallOutcome:
    """The built-in first stage: ``samples`` answers from the small role in one call."""
    request = ModelRequest(
        messages=solve_messages(problem, params.system, ctx.conversation),
        n=params.samples,
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        seed=ctx.rng.randrange(2**31),
        logprobs=True,
    )
    generation = await ctx.models[params.small_role].generate(request)
    votes: Counter[str] = Counter()
    texts: dict[str, str] = {}
    logprob_sums: dict[str, tuple[float, int]] = {}
    for index, choice in enumerate(generation.choices):
        answer = extract_answer(choice.text)
        path = path_probability(choice)
        confidence = math.exp(path.mean) if path is not None and path.tokens else None
        ctx.trace(
            "sample",
            index=index,
            answer=answer,
            confidence=None if confidence is None else round(confidence, 4),
        )
        if answer is None:
            continue
        votes[answer] += 1
        texts.setdefault(answer, choice.text)
        if path is not None and path.tokens:
            total, count = logprob_sums.get(answer, (0.0, 0))
            logprob_sums[answer] = (total + path.total, count + path.tokens)
    # Most votes first; ties go to the answer seen first (Counter keeps insertion order).
    leader = max(votes, key=lambda a: votes[a]) if votes else None
    confidence = None
    if leader is not None and leader in logprob_sums:
        total, count = logprob_sums[leader]
        confidence = math.exp(total / count)
    return SmallOutcome(
        leader, dict(votes.most_common()), len(generation.choices), texts, confidence
    )


async def run_small_child(problem: str, ctx: Context, spec: BaseModel) -> SmallOutcome:
    result = await ctx.run(spec, problem)
    votes = dict(result.votes) or ({result.answer: 1} if result.answer is not None else {})
    texts = {result.answer: result.text} if result.answer is not None and result.text else {}
    samples = sum(votes.values())
    return SmallOutcome(result.answer, votes, samples, texts, exhausted=result.budget_exhausted)


def with_attempts(problem: str, small: SmallOutcome) -> str:
    """The problem followed by the small model's attempts, most votes first."""
    ranked = sorted(small.texts, key=lambda a: -small.votes.get(a, 0))[:MAX_SHARED]
    attempts = "\n\n".join(
        f"Attempt {i} (answer {answer}, {small.votes.get(answer, 0)} of {small.samples} "
        f"samples):\n{small.texts[answer].strip()}"
        for i, answer in enumerate(ranked, start=1)
    )
    return problem + ATTEMPTS_NOTE.format(attempts=attempts) if attempts else problem


def escalation_reason(small: SmallOutcome, params: Params) -> str | None:
    if small.answer is None:
        return "no_answer"
    if small.share < params.min_agreement:
        return "agreement"
    if (
        params.min_confidence is not None
        and small.confidence is not None
        and small.confidence < params.min_confidence
    ):
        return "confidence"
    return None


async def ask_large(problem: str, ctx: Context, params: Params) -> tuple[str | None, str, bool]:
    """The large stage: (answer, text, budget exhausted)."""
    if params.large is not None:
        result = await ctx.run(params.large, problem)
        return result.answer, result.text, result.budget_exhausted
    request = ModelRequest(
        messages=solve_messages(problem, params.system, ctx.conversation),
        max_tokens=params.max_tokens,
        temperature=0.0,
    )
    generation = await ctx.models[params.large_role].generate(request)
    choice = generation.choices[0]
    answer = extract_answer(choice.text)
    ctx.trace("answer", role=params.large_role, answer=answer, finish_reason=choice.finish_reason)
    return answer, choice.text, False


def finish(
    ctx: Context,
    answer: str | None,
    source: Literal["small", "large", "none"],
    *,
    text: str,
    small: SmallOutcome | None,
    exhausted: bool,
    escalated: bool,
) -> StrategyResult:
    ctx.trace("final", answer=answer, source=source)
    return StrategyResult(
        answer=answer,
        text=text,
        votes=small.votes if small is not None else {},
        budget_exhausted=exhausted,
        details={
            "escalated": escalated,
            "source": source,
            "agreement": small.share if small is not None else None,
            "confidence": small.confidence if small is not None else None,
        },
    )


async def run(problem: str, ctx: Context, params: Params) -> StrategyResult:
    try:
        if params.small is not None:
            small = await run_small_child(problem, ctx, params.small)
        else:
            small = await sample_small(problem, ctx, params)
    except BudgetExhausted as exc:
        ctx.trace("budget_exhausted", what=exc.what, stage="small")
        return finish(ctx, None, "none", text="", small=None, exhausted=True, escalated=False)

    ctx.trace(
        "agreement",
        share=round(small.share, 4),
        votes=small.votes,
        samples=small.samples,
        threshold=params.min_agreement,
    )
    if small.confidence is not None:
        ctx.trace(
            "confidence",
            value=round(small.confidence, 4),
            source="logprobs",
            threshold=params.min_confidence,
        )
    small_text = small.texts.get(small.answer, "") if small.answer is not None else ""
    reason = escalation_reason(small, params)
    if reason is None:
        ctx.trace("accept", answer=small.answer)
        return finish(
            ctx,
            small.answer,
            "small",
            text=small_text,
            small=small,
            exhausted=small.exhausted,
            escalated=False,
        )

    ctx.trace("escalate", reason=reason, answer=small.answer)
    question = with_attempts(problem, small) if params.share_attempts else problem
    try:
        answer, text, exhausted = await ask_large(question, ctx, params)
    except BudgetExhausted as exc:
        ctx.trace("budget_exhausted", what=exc.what, stage="large", answer=small.answer)
        answer, text, exhausted = None, "", True
    if answer is not None:
        return finish(
            ctx, answer, "large", text=text, small=small, exhausted=exhausted, escalated=True
        )
    source: Literal["small", "none"] = "small" if small.answer is not None else "none"
    return finish(
        ctx, small.answer, source, text=small_text, small=small, exhausted=exhausted, escalated=True
    )
