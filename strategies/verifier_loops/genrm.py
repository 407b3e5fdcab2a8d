"""``genrm``: candidate solutions, each verified by several chain-of-thought verification
chains; the candidate with the highest mean P(Yes) wins.

Zhang, Hosseini, Bansal, Kazemi, Kumar and Agarwal, *Generative Verifiers: Reward Modeling
as Next-Token Prediction* (2024): a verifier that reasons before it judges (GenRM-CoT)
scores a solution by P(Yes) at its verdict token, and sampling several rationales and
averaging their P(Yes) ("majority voting" over verification chains) improves the score.
Singhi, Bansal, Hosseini, Grover, Chang, Rohrbach and Rohrbach, *When To Solve, When To
Verify: Compute-Optimal Problem Solving and Generative Verification for LLM Reasoning*
(2025) measure what that costs against self-consistency (SC) at equal compute.

As implemented:
1. ``solutions`` candidates: samples from ``role``, or runs of the ``generator`` child
   (``strategies.shared.candidates``).
2. Each distinct candidate text with an answer gets one verifier call with
   ``n = verifications`` chains, sampled at ``verify_temperature`` > 0 so the chains
   differ. The verifier is asked to check the solution step by step and end with a line
   ``Verdict: Yes`` or ``Verdict: No`` (prompt below; ``strategies.shared.verification``'s
   prompt asks for the verdict first, which is GenRM without the CoT).
3. A chain's score is P(Yes) at the verdict token: the first token after the last
   ``Verdict:`` in the chain's tokens, read from its top logprobs with
   ``strategies.shared.scoring.yes_probability``. Without logprobs, the word after ``Verdict:``
   is parsed (Yes = 1, No = 0). A chain with no verdict line (cut by ``verify_tokens``,
   or off-format) is not counted: guessing from the reasoning would read the verdicts
   of intermediate steps. A candidate's score is the mean over its counted chains.
4. The best-scored candidate wins (``candidates.pick`` with ``max``: ties go to the
   answer more candidates agree on, then to the first candidate). Candidates without a
   score (no chain counted, or the budget could not pay for their verification) never
   beat a scored one; with none scored, the majority vote of the candidates decides.
   ``verifications = 0`` is plain self-consistency (majority vote, no verifier calls).

Solutions or verifications at a fixed budget (Singhi et al.): with cost counted in
generated tokens, C = S·T_S + S·V·T_V, i.e. C / T_S = S·(1 + λV) solution-equivalents
with λ = T_V / T_S. They find SC more compute-efficient than GenRM at most practical
budgets — GenRM first matches SC only at up to 8× SC's compute — and, where GenRM pays
off, the compute-optimal number of solutions grows faster than the number of
verifications (S_opt ∝ C^0.57, V_opt ∝ C^0.39). ``allocate`` turns that into a rule:
below ``genrm_from`` solution-equivalents all of the budget goes to solutions (SC);
above it, V ≈ (C/λ)^(0.39/0.96) (the paper's exponents normalised to sum to 1, since
S·λV ≈ C once verification dominates), and S takes what is left. Setting
``budget_tokens`` applies it, with ``max_tokens`` and ``verify_tokens`` as T_S and T_V
(upper bounds, so the plan never exceeds the budget). The default crossover of 16 is a
judgement: the paper's crossover depends on the model pair and on how good the verifier
is (a fine-tuned verifier needs up to 16× less compute), so tune it per deployment.

Cost: ``solutions`` × ``max_tokens`` (or child runs) plus, per distinct candidate text,
one call of ``verifications`` × ``verify_tokens``.

Trace: ``allocate`` (when ``budget_tokens`` is set), ``candidate`` per candidate,
``budget_exhausted`` (phase, what), ``score`` per candidate inside a ``verify`` span
(index, answer, mean score, each chain's score and source, the candidate it duplicates,
or source budget / no_answer), ``select`` (as in ``best_of_n``), or ``vote`` when
``verifications`` is 0.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from strategies.compose import ChildSpec
from strategies.protocol import (
    BudgetExhausted,
    Choice,
    Context,
    Generation,
    Message,
    ModelRequest,
    StrategyResult,
    role_field,
)
from strategies.shared.candidates import (
    Candidate,
    distinct_texts,
    majority,
    obtain,
    pick,
    settle,
)
from strategies.shared.prompts import solve_messages
from strategies.shared.scoring import yes_probability
from strategies.verifier_loops.best_of_n import result_of, trace_pick

GENRM_SYSTEM = (
    "You are a math teacher grading a solution. Check it step by step: redo each "
    "calculation and say whether it is right. Then write a last line that is exactly "
    "'Verdict: Yes' if the whole solution is correct, or 'Verdict: No' if it is not."
)

# The paper's compute-optimal exponents (S_opt ∝ C^0.57, V_opt ∝ C^0.39).
SOLUTION_EXPONENT, VERIFICATION_EXPONENT = 0.57, 0.39


class Params(BaseModel):
    """Candidates scored by the mean P(Yes) of several verification chains each."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["genrm"] = "genrm"
    role: str = role_field(default="small", description="Model role that samples candidates.")
    generator: ChildSpec | None = Field(
        default=None,
        description="Child strategy run once per candidate; None samples from role.",
    )
    solutions: int = Field(default=4, ge=1, le=64, description="Candidate solutions (S).")
    verifications: int = Field(
        default=4,
        ge=0,
        le=32,
        description="Verification chains per candidate (V); 0 is plain self-consistency.",
    )
    verifier_role: str = role_field(default="large", description="Model role that verifies.")
    temperature: float = Field(default=0.7, ge=0.0, le=2.0, description="Solution sampling.")
    top_p: float | None = Field(default=0.95, gt=0.0, le=1.0, description="Nucleus sampling.")
    max_tokens: int = Field(default=512, ge=1, le=32768, description="Per candidate (T_S).")
    verify_temperature: float = Field(
        default=0.7, gt=0.0, le=2.0, description="Chain sampling; > 0 so chains differ."
    )
    verify_tokens: int = Field(
        default=256, ge=8, le=8192, description="Per verification chain (T_V)."
    )
    top_logprobs: int = Field(
        default=10, ge=1, le=20, description="Alternatives read at the verdict token."
    )
    budget_tokens: int | None = Field(
        default=None,
        ge=1,
        description="When set, solutions and verifications are chosen by allocate() for "
        "this many generated tokens (overriding both).",
    )
    genrm_from: float = Field(
        default=16.0,
        ge=1.0,
        description="Budget in solution-equivalents below which allocate() spends "
        "everything on solutions (self-consistency).",
    )
    system: str | None = Field(default=None, description="Replaces the default system prompt.")


def allocate(
    budget_tokens: int, solution_tokens: int, verification_tokens: int, genrm_from: float = 16.0
) -> tuple[int, int]:
    """(solutions, verifications) for a budget of generated tokens; see the module doc.

    >>> allocate(8 * 512, 512, 256)      # 8 solution-equivalents: self-consistency
    (8, 0)
    >>> allocate(64 * 512, 512, 256)     # 64: 14 solutions, 7 chains each
    (14, 7)
    """
    compute = budget_tokens / solution_tokens
    sc = (max(1, math.floor(compute)), 0)
    if compute < genrm_from:
        return sc
    ratio = verification_tokens / solution_tokens
    share = VERIFICATION_EXPONENT / (SOLUTION_EXPONENT + VERIFICATION_EXPONENT)
    verifications = max(1, math.floor((compute / ratio) ** share))
    solutions = math.floor(compute / (1 + ratio * verifications))
    # Choosing among fewer than two candidates needs no verifier.
    while solutions < 2 and verifications > 1:
        verifications -= 1
        solutions = math.floor(compute / (1 + ratio * verifications))
    return (solutions, verifications) if solutions >= 2 else sc


def verify_chain_messages(problem: str, solution: str) -> list[Message]:
    user = (
        f"Problem:\n{problem}\n\nProposed solution:\n{solution}\n\n"
        "Verify the solution step by step, then end with 'Verdict: Yes' or 'Verdict: No'."
    )
    return [{"role": "system", "content": GENRM_SYSTEM}, {"role": "user", "content": user}]


_VERDICT_MARK = re.compile(r"verdict\s*:", re.I)
_VERDICT_WORD = re.compile(r"\s*[*_`]*\s*(yes|no)\b", re.I)


def chain_score(choice: Choice) -> tuple[float | None, Literal["logprobs", "parsed", "none"]]:
    """P(Yes) at the verdict token of one verification chain, and where it came from."""
    marks = list(_VERDICT_MARK.finditer(choice.text))
    if not marks:
        return None, "none"
    end = marks[-1].end()
    if choice.tokens:
        offset = 0
        for at, token in enumerate(choice.tokens):
            offset += len(token.token)
            if offset > end:  # this token holds the first character after the mark
                tail = Choice(index=choice.index, text=choice.text[end:], tokens=choice.tokens[at:])
                p_yes = yes_probability(tail)
                if p_yes is not None:
                    return p_yes, "logprobs"
                break
    word = _VERDICT_WORD.match(choice.text, end)
    if word:
        return (1.0 if word.group(1).lower() == "yes" else 0.0), "parsed"
    return None, "none"


def _chains(generation: Generation) -> list[dict[str, Any]]:
    return [
        {"score": score, "source": source}
        for score, source in (chain_score(c) for c in generation.choices)
    ]


async def verify(
    problem: str, ctx: Context, params: Params, candidates: list[Candidate], verifications: int
) -> tuple[list[float | None], str | None]:
    """Each candidate's mean chain score (None: unscored), and what ran out, if anything."""
    first = distinct_texts(candidates)
    fresh = sorted(set(first.values()))
    # Every request (and seed) exists before the first await: replay issues equal keys.
    requests = [
        ModelRequest(
            messages=verify_chain_messages(problem, candidates[i].text),
            n=verifications,
            max_tokens=params.verify_tokens,
            temperature=params.verify_temperature,
            seed=ctx.rng.randrange(2**31),
            logprobs=True,
            top_logprobs=params.top_logprobs,
        )
        for i in fresh
    ]
    model = ctx.models[params.verifier_role]
    results = await settle([model.generate(r) for r in requests])
    exhausted: str | None = None
    chains: dict[int, list[dict[str, Any]] | None] = {}
    for i, result in zip(fresh, results, strict=True):
        if isinstance(result, BudgetExhausted):
            exhausted = exhausted or result.what
            chains[i] = None
        else:
            chains[i] = _chains(result)
    scores: list[float | None] = []
    for c in candidates:
        mine = chains[first[c.index]] if c.index in first else None
        counted = [ch["score"] for ch in mine or [] if ch["score"] is not None]
        score = sum(counted) / len(counted) if counted else None
        if c.index not in first:
            source = "no_answer"
        elif mine is None:
            source = "budget"
        else:
            source = "chains"
        earlier = first.get(c.index, c.index)
        ctx.trace(
            "score",
            index=c.index,
            answer=c.answer,
            score=score,
            source=source,
            chains=mine,
            duplicate_of=earlier if earlier != c.index else None,
        )
        scores.append(score)
    return scores, exhausted


async def run(problem: str, ctx: Context, params: Params) -> StrategyResult:
    solutions, verifications = params.solutions, params.verifications
    if params.budget_tokens is not None:
        solutions, verifications = allocate(
            params.budget_tokens, params.max_tokens, params.verify_tokens, params.genrm_from
        )
        ctx.trace(
            "allocate",
            budget_tokens=params.budget_tokens,
            solution_equivalents=params.budget_tokens / params.max_tokens,
            solutions=solutions,
            verifications=verifications,
            mode="genrm" if verifications else "self_consistency",
        )
    found = await obtain(
        problem,
        ctx,
        n=solutions,
        role=params.role,
        generator=params.generator,
        messages=solve_messages(problem, params.system, ctx.conversation),
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
    )
    exhausted = found.exhausted
    if exhausted:
        ctx.trace("budget_exhausted", phase="generate", what=exhausted)
    if verifications == 0:
        chosen = majority(found.items)
        votes = Counter(c.answer for c in found.items if c.answer is not None)
        ctx.trace("vote", votes=dict(votes), answer=chosen.answer, index=chosen.index)
        return result_of(found, chosen, [], exhausted is not None)
    async with ctx.span("verify", candidates=len(found.items), verifications=verifications):
        scores, ran_out = await verify(problem, ctx, params, found.items, verifications)
    if ran_out and not exhausted:
        exhausted = ran_out
        ctx.trace("budget_exhausted", phase="verify", what=ran_out)
    chosen = pick(found.items, scores, "max")
    trace_pick(ctx, chosen, "max")
    return result_of(found, chosen, scores, exhausted is not None)
