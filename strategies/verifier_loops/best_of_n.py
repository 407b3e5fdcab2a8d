"""``best_of_n``: generate N candidate solutions, score each with a generative verifier,
keep the best.

Best-of-N selection with a verifier goes back to Cobbe et al., *Training Verifiers to
Solve Math Word Problems* (2021); the verifier here is generative, as in Zhang et al.,
*Generative Verifiers: Reward Modeling as Next-Token Prediction* (2024): a model is asked
"is this solution correct?" and the score is P(Yes) read from the verdict token's
logprobs (``strategies.shared.verification``; where the server gives no logprobs, or the
verdict is no yes/no word, a score parsed from the text, and the trace says which).

As implemented:
1. Candidates: ``n`` samples from ``role`` (in calls of ``batch_size`` issued together),
   or ``n`` runs of the ``generator`` child strategy (e.g. ``self_consistency``), one
   after another (``strategies.shared.candidates``).
2. Verification: every candidate with an answer is judged by ``verifier_role`` at
   temperature 0, all judgements issued together. Candidates with equal texts share one
   judgement (a greedy judge would only repeat itself); a candidate without an
   extractable answer is not judged (there is nothing to pick from it).
3. Selection (``strategies.shared.candidates.pick``): ``aggregate="max"`` keeps the
   highest-scored candidate; ``"weighted_vote"`` sums scores per normalised answer
   (Uesato et al., 2022, "verifier-weighted majority"). Ties go to the answer more
   candidates agree on, then to the first candidate.
4. Failed verifications are explicit: a judgement that could not be read (score None)
   or could not be paid (``BudgetExhausted``) leaves its candidate unscored; unscored
   candidates never beat a scored one. When no candidate is scored the answer is the
   majority vote of all candidates.

Execution check (``execution_check``: a configured tool such as ``python``): before the
generative verifier, ``verifier_role`` writes one program that computes the answer on its
own (the Program-of-Thoughts prompt) and the tool runs it. When it prints a number, a
candidate whose answer equals it scores 1 and any other scores 0 (source ``execution``),
and no generative judgement is paid for. When the program fails or prints no number the
check abstains (traced as ``execution_check`` with ``abstained``) and the generative
verifier scores as usual: an imperfect check that had to answer would cap accuracy
(*FLaws*), so it may say nothing.

Anytime: when the budget runs out during generation, the candidates obtained are
verified as far as the budget allows; when it runs out during verification, the best
verified candidate wins (or, with none verified, the majority of the candidates). Either
way the result is marked ``budget_exhausted``.

Cost: ``n`` candidates (``n`` × ``max_tokens`` sampled, or ``n`` child runs) plus one
verifier call of ``verify_tokens`` (default 4) per distinct candidate text.

Trace: ``candidate`` per candidate (index, answer, source, finish reason),
``budget_exhausted`` (phase, what), ``score`` per candidate inside a ``verify`` span
(index, answer, score, source: logprobs | parsed | none | budget | no_answer,
duplicate_of), ``select`` (aggregate, winner index, answer, score, scores per answer,
tie_break, fallback).
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from strategies.compose import ChildSpec
from strategies.protocol import (
    BudgetExhausted,
    Context,
    ModelRequest,
    StrategyResult,
    role_field,
    tool_field,
)
from strategies.shared.candidates import (
    Candidate,
    Candidates,
    Pick,
    distinct_texts,
    obtain,
    pick,
    settle,
)
from strategies.shared.programs import PROGRAM_SYSTEM, answer_of, program_of
from strategies.shared.prompts import solve_messages
from strategies.shared.verification import Verdict, judge, verify_messages


class Params(BaseModel):
    """N candidates, each judged by a generative verifier; the best-scored one wins."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["best_of_n"] = "best_of_n"
    role: str = role_field(default="small", description="Model role that samples candidates.")
    generator: ChildSpec | None = Field(
        default=None,
        description="Child strategy run n times for the candidates; None samples from role.",
    )
    n: int = Field(default=4, ge=1, le=64, description="Candidates to generate.")
    verifier_role: str = role_field(default="large", description="Model role that judges.")
    aggregate: Literal["max", "weighted_vote"] = Field(
        default="max",
        description="max: the best-scored candidate; weighted_vote: the answer with the "
        "highest sum of scores.",
    )
    batch_size: int | None = Field(
        default=None, ge=1, le=64, description="Samples per call; None: all in one call."
    )
    temperature: float = Field(default=0.7, ge=0.0, le=2.0, description="Sampling temperature.")
    top_p: float | None = Field(default=0.95, gt=0.0, le=1.0, description="Nucleus sampling.")
    max_tokens: int = Field(default=512, ge=1, le=32768, description="Per sampled candidate.")
    verify_tokens: int = Field(
        default=4, ge=1, le=64, description="Tokens per judgement (the verdict comes first)."
    )
    system: str | None = Field(default=None, description="Replaces the default system prompt.")
    execution_check: str | None = tool_field(
        default=None,
        description="A tool that runs the verifier's own program for the answer: "
        "agreement scores 1, disagreement 0; a failed run abstains (generative verdicts).",
    )
    check_tokens: int = Field(default=512, ge=1, le=32768, description="Per check program.")


async def execution_check(
    problem: str, ctx: Context, params: Params, tool: str
) -> tuple[str | None, str | None]:
    """The answer the verifier's program printed (None: abstained) and why it abstained."""
    request = ModelRequest(
        messages=solve_messages(problem, PROGRAM_SYSTEM, ctx.conversation),
        max_tokens=params.check_tokens,
        temperature=0.0,
        seed=ctx.rng.randrange(2**31),
    )
    generation = await ctx.models[params.verifier_role].generate(request)
    run = await ctx.tools[tool].call({"code": program_of(generation.choices[0].text)})
    printed = answer_of(run.output) if run.ok else None
    if printed is None:
        return None, (run.error or "printed no number")[-200:]
    return printed, None


async def verify(
    problem: str, ctx: Context, params: Params, candidates: list[Candidate]
) -> tuple[list[Verdict | None], str | None]:
    """One verdict per candidate (None: not judged or not paid), and what ran out."""
    first = distinct_texts(candidates)
    fresh = sorted(set(first.values()))
    # Seeds drawn for every judgement before any is awaited: replay issues equal keys.
    seeds = [ctx.rng.randrange(2**31) for _ in fresh]
    model = ctx.models[params.verifier_role]
    results = await settle(
        [
            judge(
                model,
                verify_messages(problem, candidates[i].text),
                seed=seed,
                max_tokens=params.verify_tokens,
            )
            for i, seed in zip(fresh, seeds, strict=True)
        ]
    )
    exhausted: str | None = None
    verdict_of: dict[int, Verdict | None] = {}
    for i, result in zip(fresh, results, strict=True):
        if isinstance(result, BudgetExhausted):
            exhausted = exhausted or result.what
            verdict_of[i] = None
        else:
            verdict_of[i] = result[0]
    verdicts: list[Verdict | None] = []
    for c in candidates:
        source = "no_answer"
        verdict = None
        if c.answer is not None:
            verdict = verdict_of[first[c.index]]
            source = verdict.source if verdict is not None else "budget"
        ctx.trace(
            "score",
            index=c.index,
            answer=c.answer,
            score=verdict.score if verdict is not None else None,
            source=source,
            duplicate_of=_duplicate_of(first, c.index),
        )
        verdicts.append(verdict)
    return verdicts, exhausted


def _duplicate_of(first: dict[int, int], index: int) -> int | None:
    earlier = first.get(index, index)
    return earlier if earlier != index else None


def trace_pick(ctx: Context, chosen: Pick, aggregate: str) -> None:
    ctx.trace(
        "select",
        aggregate=aggregate,
        index=chosen.index,
        answer=chosen.answer,
        score=chosen.score,
        scores=chosen.by_answer,
        tie_break=chosen.tie_break,
        fallback=chosen.fallback,
    )


def result_of(
    found: Candidates, chosen: Pick, scores: list[float | None], exhausted: bool
) -> StrategyResult:
    return StrategyResult(
        answer=chosen.answer,
        text=chosen.text,
        votes=dict(Counter(c.answer for c in found.items if c.answer is not None)),
        budget_exhausted=exhausted,
        details={
            "candidates": len(found.items),
            "scores": scores,
            "winner": chosen.index,
            "score": chosen.score,
            "tie_break": chosen.tie_break,
            "fallback": chosen.fallback,
        },
    )


async def run(problem: str, ctx: Context, params: Params) -> StrategyResult:
    found = await obtain(
        problem,
        ctx,
        n=params.n,
        role=params.role,
        generator=params.generator,
        messages=solve_messages(problem, params.system, ctx.conversation),
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        batch_size=params.batch_size,
    )
    exhausted = found.exhausted
    if exhausted:
        ctx.trace("budget_exhausted", phase="generate", what=exhausted)
    checked: str | None = None
    if params.execution_check is not None and not exhausted:
        try:
            checked, abstained = await execution_check(problem, ctx, params, params.execution_check)
        except BudgetExhausted as exc:
            checked, abstained = None, f"budget exhausted: {exc.what}"
        ctx.trace("execution_check", answer=checked,
                  **({"abstained": abstained} if abstained else {}))  # fmt: skip
    if checked is not None:
        scores: list[float | None] = [
            None if c.answer is None else 1.0 if c.answer == checked else 0.0 for c in found.items
        ]
        for c, score in zip(found.items, scores, strict=True):
            ctx.trace("score", index=c.index, answer=c.answer, score=score, source="execution")
    else:
        async with ctx.span("verify", candidates=len(found.items)):
            verdicts, ran_out = await verify(problem, ctx, params, found.items)
        if ran_out and not exhausted:
            exhausted = ran_out
            ctx.trace("budget_exhausted", phase="verify", what=ran_out)
        scores = [v.score if v is not None else None for v in verdicts]
    chosen = pick(found.items, scores, params.aggregate)
    trace_pick(ctx, chosen, params.aggregate)
    return result_of(found, chosen, scores, exhausted is not None)
