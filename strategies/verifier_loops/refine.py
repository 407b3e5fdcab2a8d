"""``refine``: iterative refinement — critique, revise, re-score, keep the best.

Madaan et al., *Self-Refine: Iterative Refinement with Self-Feedback* (NeurIPS 2023),
with the feedback and the stopping signal coming from a separate verifier, as in
"review, refine, repeat" loops: a model that critiques is not trusted to also decide
alone when it is done, so every candidate is scored by the shared generative verifier
(P(Yes) of "is this solution correct?", ``strategies.shared.verification``).

As implemented:
1. An initial candidate: one sample from ``role``, or the result of a child strategy
   (``initial``, e.g. ``{"kind": "self_consistency", "n": 5}``). It is scored (round 0).
2. Each round, while the best score is below ``pass_score``: the verifier role writes a
   short critique of the best candidate so far (``critique_tokens``), the solver role
   rewrites that candidate given the critique (a follow-up turn after its own solution,
   Self-Refine's feedback-then-refine prompt), and the revision is scored.
3. The best-scored candidate is kept (a revision must beat it strictly; ties keep the
   earlier one), so a bad revision never replaces a better solution: the next round
   critiques the best again. An unreadable verdict scores 0 for ranking and never
   passes.
4. Stops when a score reaches ``pass_score`` ("passed"), after ``max_rounds`` rounds
   ("max_rounds"), or when the budget runs out ("budget_exhausted", best so far).

Self-Refine feeds the whole history of attempts and feedback back to the model; this
keeps only the best candidate and its critique, so the prompt stays short on small
models and CPUs.

Cost: the initial candidate (one call of ``max_tokens``, or the child's cost) and one
verifier call of 4 tokens; then per round one critique (``critique_tokens``, verifier
role), one revision (``max_tokens``, solver role) and one verifier call.

Trace: ``score`` (round, score, source of the score, candidate kind, answer, whether it
is the new best), ``critique`` (round, text), ``revision`` (round, answer, finish
reason), ``budget_exhausted``, ``stop`` (reason, rounds, best round, score, answer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from strategies.compose import ChildSpec
from strategies.protocol import (
    BudgetExhausted,
    Context,
    Message,
    ModelRequest,
    StrategyResult,
    role_field,
)
from strategies.shared.answers import extract_answer
from strategies.shared.prompts import solve_messages
from strategies.shared.verification import judge, verify_messages

CRITIQUE_SYSTEM = (
    "You review math solutions. Name the most important error or gap in the solution "
    "in one or two sentences. If the solution is correct, say that it is correct."
)
REVISE_PROMPT = (
    "A reviewer wrote this feedback on your solution:\n{critique}\n\n"
    "Rewrite the solution, fixing what the feedback points out. Reason step by step, "
    "briefly, and finish with a line of the form 'The answer is N.'"
)


class Params(BaseModel):
    """Critique-revise-score rounds on the best candidate until the verifier passes it."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["refine"] = "refine"
    role: str = role_field(default="small", description="Model role that solves and revises.")
    verifier_role: str = role_field(
        default="large", description="Model role that scores and critiques candidates."
    )
    initial: ChildSpec | None = Field(
        default=None,
        description="Child strategy giving the initial candidate; None samples one from role.",
    )
    max_rounds: int = Field(
        default=3, ge=0, le=10, description="Most critique-revise rounds after the initial one."
    )
    pass_score: float = Field(
        default=0.8, ge=0.0, le=1.0, description="Stop once a candidate scores at least this."
    )
    temperature: float = Field(
        default=0.7, ge=0.0, le=2.0, description="Sampling temperature of solutions."
    )
    max_tokens: int = Field(
        default=512, ge=1, le=32768, description="Per solution (initial or revision)."
    )
    critique_tokens: int = Field(default=128, ge=1, le=4096, description="Per critique.")
    critique_temperature: float = Field(
        default=0.0, ge=0.0, le=2.0, description="Sampling temperature of critiques."
    )
    system: str | None = Field(default=None, description="Replaces the default system prompt.")


@dataclass(frozen=True)
class Candidate:
    round: int
    text: str
    answer: str | None
    score: float
    """The verifier's score, 0.0 when it could not be read."""
    readable: bool


def critique_messages(problem: str, solution: str) -> list[Message]:
    user = f"Problem:\n{problem}\n\nSolution:\n{solution}\n\nWrite a short critique."
    return [{"role": "system", "content": CRITIQUE_SYSTEM}, {"role": "user", "content": user}]


def revise_messages(
    problem: str, solution: str, critique: str, system: str | None
) -> list[Message]:
    return [
        *solve_messages(problem, system),
        {"role": "assistant", "content": solution},
        {"role": "user", "content": REVISE_PROMPT.format(critique=critique.strip())},
    ]


async def _sample(
    ctx: Context, role: str, messages: list[Message], max_tokens: int, temperature: float
) -> tuple[str, str | None]:
    request = ModelRequest(
        messages=messages,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=ctx.rng.randrange(2**31),
    )
    choice = (await ctx.models[role].generate(request)).choices[0]
    return choice.text, choice.finish_reason


async def _initial(problem: str, ctx: Context, params: Params) -> tuple[str, str | None, bool]:
    """The first candidate's text and answer, and whether a child ran out of budget."""
    if params.initial is not None:
        result = await ctx.run(params.initial, problem)
        text = result.text or (f"The answer is {result.answer}." if result.answer else "")
        return text, result.answer or extract_answer(text), result.budget_exhausted
    messages = solve_messages(problem, params.system, ctx.conversation)
    text, _ = await _sample(ctx, params.role, messages, params.max_tokens, params.temperature)
    return text, extract_answer(text), False


async def _score(
    problem: str,
    ctx: Context,
    params: Params,
    text: str,
    answer: str | None,
    round_: int,
    best: Candidate | None,
) -> Candidate:
    verdict = (
        await judge(
            ctx.models[params.verifier_role],
            verify_messages(problem, text),
            seed=ctx.rng.randrange(2**31),
        )
    )[0]
    score = verdict.score if verdict.score is not None else 0.0
    candidate = Candidate(round_, text, answer, score, verdict.score is not None)
    ctx.trace(
        "score",
        round=round_,
        score=verdict.score,
        source=verdict.source,
        candidate="initial" if round_ == 0 else "revision",
        answer=answer,
        best=_better(candidate, best),
    )
    return candidate


def _better(candidate: Candidate, best: Candidate | None) -> bool:
    # Strictly better: on a tie the earlier candidate stays (it was checked first).
    return best is None or not best.readable or candidate.score > best.score


def _passed(best: Candidate | None, params: Params) -> bool:
    return best is not None and best.readable and best.score >= params.pass_score


async def run(problem: str, ctx: Context, params: Params) -> StrategyResult:
    best: Candidate | None = None
    exhausted = False
    rounds = 0
    reason = "max_rounds"
    try:
        text, answer, exhausted = await _initial(problem, ctx, params)
        if not text.strip():
            reason = "no_candidate"
        else:
            # Unscored until the verifier answers: still the anytime answer if it cannot.
            best = Candidate(0, text, answer, 0.0, readable=False)
            best = await _score(problem, ctx, params, text, answer, 0, None)
            while not _passed(best, params) and rounds < params.max_rounds:
                assert best is not None
                rounds += 1
                async with ctx.span("round", round=rounds):
                    critique, _ = await _sample(
                        ctx,
                        params.verifier_role,
                        critique_messages(problem, best.text),
                        params.critique_tokens,
                        params.critique_temperature,
                    )
                    ctx.trace("critique", round=rounds, of_round=best.round, text=critique)
                    revision, finish = await _sample(
                        ctx,
                        params.role,
                        revise_messages(problem, best.text, critique, params.system),
                        params.max_tokens,
                        params.temperature,
                    )
                    answer = extract_answer(revision)
                    ctx.trace("revision", round=rounds, answer=answer, finish_reason=finish)
                    scored = await _score(problem, ctx, params, revision, answer, rounds, best)
                    if _better(scored, best):
                        best = scored
            if _passed(best, params):
                reason = "passed"
    except BudgetExhausted as exc:
        exhausted, reason = True, "budget_exhausted"
        ctx.trace("budget_exhausted", what=exc.what, round=rounds)
    ctx.trace(
        "stop",
        reason=reason,
        rounds=rounds,
        best_round=best.round if best else None,
        score=best.score if best else None,
        answer=best.answer if best else None,
    )
    return StrategyResult(
        answer=best.answer if best else None,
        text=best.text if best else "",
        budget_exhausted=exhausted,
        details={
            "rounds": rounds,
            "stopped": reason,
            "best_round": best.round if best else None,
            "score": best.score if best else None,
        },
    )
