"""``plan_and_budget``: plan sub-questions, give each a token budget, solve them in turn.

Lin et al., *Plan and Budget: Effective and Efficient Test-Time Scaling on Large Language
Model Reasoning* (2025). Their Bayesian Budget Allocation Model spends tokens where
reducible uncertainty is highest: on harder sub-questions, and on early steps (later
steps build on earlier results, so less is left unknown). Calls:

1. **plan** (``planner_role``): the question broken into at most ``max_steps``
   sub-questions, one per line as ``1. [3] sub-question`` with a difficulty 1-5; parsed
   leniently (``parse_plan``). Traced ``plan``; nothing parsable -> ``plan_unparsable``
   and one direct solve with what is left.
2. **allocate**: the step budget ``B`` = min(``total_tokens`` − plan tokens used, the
   job's remaining tokens) − ``synthesis_tokens``, split by ``allocate`` (below). Traced
   ``allocation``. If ``B`` cannot give every step ``min_step_tokens``:
   ``plan_unaffordable`` and a direct solve within ``B + synthesis_tokens``.
3. **steps** (``role``): each sub-question with the earlier sub-answers as context,
   ``max_tokens`` = its allocation. Traced ``sub_answer`` per step.
4. **synthesis** (``role``, ``synthesis_tokens``): the final answer from the sub-answers.
   Traced ``synthesis``; with no answer in it, the last sub-answer's (``answer_from_steps``).

So the whole strategy generates at most ``total_tokens``. Out of budget mid-way, it
returns the last sub-answer it has (anytime).

**Allocation** (``allocate``), for n steps with difficulties c_i (0-based position i)::

    d_i = 1                               uniform
        = (n - i) / n                     linear
        = ((n - i) / n) ** decay_power    polynomial   (decay_power = 2)
        = decay_base ** i                 exponential  (decay_base = 0.9)
        = (1 + cos(pi * i / (n - 1))) / 2 + 0.1   cosine (1 when n = 1)
    w_i = c_i * d_i
    b_i = m + floor((B - n*m) * w_i / sum(w))    m = min_step_tokens

then the tokens lost to rounding go one each to the steps with the largest fractional
parts (earlier step first on ties), so sum(b_i) = B exactly. The decay shapes are those of
the authors' released code (``P-and-B``, ``allocate_tokens``; linear and polynomial written
there as (n - i) and (n - i)^2, equal up to the normalisation); the per-step minimum is
ours, so that a late, easy step is never starved to a few tokens. Difficulties missing from
a plan line are set to the mean of the given ones (all equal when none is given).

Unlike the released code, which puts every sub-question and its budget into one prompt
(soft budgets), each step here is its own call whose allocation is a hard ``max_tokens``.
Stating the budget in the prompt as well is optional (``budget_hint``, off by default): on
one GSM8K step, "Answer within 344 tokens." made the embedded Qwen2.5-Coder-0.5B answer in
8 tokens without reasoning (wrongly); without the hint it reasoned step by step. The default
schedule, polynomial, is the one the authors' README runs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from strategies.protocol import (
    BudgetExhausted,
    Context,
    Message,
    ModelRequest,
    ModelRole,
    StrategyResult,
    role_field,
)
from strategies.shared.answers import extract_answer
from strategies.shared.prompts import solve_messages

Schedule = Literal["uniform", "linear", "polynomial", "exponential", "cosine"]

MIN_DIFFICULTY, MAX_DIFFICULTY = 1.0, 5.0

PLAN_SYSTEM = (
    "You split math problems into short sub-questions that, answered in order, solve "
    "them; the last one asks for the final answer. You rate how hard each sub-question "
    "is from 1 (easy) to 5 (hard). You do not solve them. Write one line per "
    "sub-question in the form '<number>. [<difficulty>] <sub-question>' and nothing else."
)
PLAN_USER = "Problem: {problem}\nAt most {max_steps} sub-questions."
# One worked turn before the real one: small models follow a shown format far better
# than a described one (and copy a format example given inside the instruction).
PLAN_EXAMPLE_PROBLEM = (
    "A shop sells pens at $2 each. Ann buys 4 pens and a book that costs $5. "
    "How much does she spend?"
)
PLAN_EXAMPLE = [
    "How much do the 4 pens cost?",
    "How much does Ann spend on the pens and the book together?",
]
PLAN_EXAMPLE_REPLY = f"1. [1] {PLAN_EXAMPLE[0]}\n2. [2] {PLAN_EXAMPLE[1]}"
STEP_SYSTEM = (
    "You are a careful problem solver. Solve only the current sub-question: reason step "
    "by step, briefly, then finish with a line of the form 'The answer is N.'"
)
SYNTHESIS_INSTRUCTION = (
    "Using these results, answer the problem briefly. Finish with a line of the form "
    "'The answer is N.'"
)


class Params(BaseModel):
    """Plan sub-questions, split ``total_tokens`` across them by difficulty and position,
    solve each within its share, then combine. Cost: 1 + steps + 1 calls, at most
    ``total_tokens`` generated tokens."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["plan_and_budget"] = "plan_and_budget"
    role: str = role_field(default="small", description="Model role that solves and combines.")
    planner_role: str | None = role_field(
        default=None, description="Model role that plans (default: the same as role)."
    )
    total_tokens: int = Field(
        default=1024, ge=1, le=131072, description="Everything generated: plan, steps, synthesis."
    )
    plan_tokens: int = Field(default=192, ge=16, le=4096, description="Planning call limit.")
    synthesis_tokens: int = Field(default=128, ge=1, le=8192, description="Final call limit.")
    max_steps: int = Field(default=5, ge=1, le=16, description="Most sub-questions used.")
    min_step_tokens: int = Field(default=32, ge=1, le=8192, description="Floor per step.")
    schedule: Schedule = Field(
        default="polynomial", description="Decay of the allocation by step position."
    )
    decay_power: float = Field(default=2.0, gt=0.0, le=8.0, description="For 'polynomial'.")
    decay_base: float = Field(default=0.9, gt=0.0, le=1.0, description="For 'exponential'.")
    budget_hint: bool = Field(
        default=False,
        description="Also state each step's budget in its prompt ('Answer within N tokens.').",
    )
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _room_for_steps(self) -> Self:
        needed = self.plan_tokens + self.synthesis_tokens + self.min_step_tokens
        if self.total_tokens < needed:
            raise ValueError(
                f"total_tokens ({self.total_tokens}) must cover plan_tokens + "
                f"synthesis_tokens + min_step_tokens ({needed})"
            )
        return self


# -- the plan ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanStep:
    question: str
    difficulty: float
    rated: bool
    """False when the plan line gave no difficulty and the default was used."""


_NUMBER = r"(\d+(?:\.\d+)?)"
_RATING = (
    r"[\[(]\s*(?:(?:difficulty|complexity|level)\s*[:=]?\s*)?"
    + _NUMBER
    + r"\s*(?:/\s*\d+)?\s*[\])]"
)
_NUMBERED = re.compile(r"^(?:(?:step|sub-?question|q)\s*)?(\d{1,2})\s*[.):-]\s*(.*)$", re.I)
_BULLET = re.compile(r"^[-*•]\s+(.*)$")
_LEADING_RATING = re.compile(r"^" + _RATING + r"\s*[-:–—]?\s*", re.I)
_TRAILING_RATING = re.compile(r"\s*[-:–—,]?\s*" + _RATING + r"\s*\.?$", re.I)
_NAMED_RATING = re.compile(
    r"[\s,;:–—-]*\(?\s*(?:difficulty|complexity)\s*[:=]?\s*" + _NUMBER + r"(?:\s*/\s*\d+)?\s*\)?",
    re.I,
)


def _rating(text: str) -> tuple[str, float | None]:
    """Split a difficulty off a plan line's text, wherever the model put it."""
    for pattern in (_LEADING_RATING, _TRAILING_RATING, _NAMED_RATING):
        found = pattern.search(text)
        if found:
            rest = (text[: found.start()] + " " + text[found.end() :]).strip()
            return rest, float(found.group(1))
    return text, None


def parse_plan(
    text: str, max_steps: int, ignore: Collection[str] = ()
) -> tuple[list[PlanStep], int]:
    """Sub-questions from a plan; returns (steps, how many were dropped beyond max_steps).

    Accepts ``1. [3] q``, ``1) (3) q``, ``**1.** [difficulty: 3] q``, ``1. q [3/5]``,
    ``1. q (difficulty 3)``, ``- [3] q``, ``[3] q`` and numbered lines without a rating.
    Other lines (preambles, answers) are skipped; a numbering that starts again (the
    model repeating or solving its plan) ends the plan. Difficulties are clamped to 1-5.
    Sub-questions in ``ignore`` (the prompt's own example, copied) are skipped.
    """
    skip = {q.casefold() for q in ignore}
    found: list[tuple[str, float | None]] = []
    seen_numbers: set[int] = set()
    for raw in text.splitlines():
        line = raw.replace("**", "").replace("`", "").strip()
        if not line:
            continue
        numbered = _NUMBERED.match(line)
        if numbered:
            number = int(numbered.group(1))
            if number in seen_numbers:
                break
            seen_numbers.add(number)
            body = numbered.group(2)
        elif bullet := _BULLET.match(line):
            body = bullet.group(1)
        elif _LEADING_RATING.match(line):
            body = line
        else:
            continue
        question, difficulty = _rating(body.strip())
        question = question.strip(" \t-:–—\"'")
        if not re.search(r"[A-Za-z]", question) or question.casefold() in skip:
            continue
        found.append((question, difficulty))
    rated = [d for _, d in found if d is not None]
    default = sum(rated) / len(rated) if rated else MIN_DIFFICULTY
    steps = [
        PlanStep(
            question=q,
            difficulty=min(max(d if d is not None else default, MIN_DIFFICULTY), MAX_DIFFICULTY),
            rated=d is not None,
        )
        for q, d in found
    ]
    return steps[:max_steps], max(0, len(steps) - max_steps)


# -- the allocation -----------------------------------------------------------------------


def decay(schedule: Schedule, i: int, n: int, *, power: float = 2.0, base: float = 0.9) -> float:
    """Weight of position ``i`` (0-based) of ``n`` steps; see the module docstring."""
    if schedule == "uniform":
        return 1.0
    if schedule == "linear":
        return (n - i) / n
    if schedule == "polynomial":
        return float(((n - i) / n) ** power)
    if schedule == "exponential":
        return float(base**i)
    if n == 1:
        return 1.0
    return (1.0 + math.cos(math.pi * i / (n - 1))) / 2.0 + 0.1


def allocate(
    difficulties: Sequence[float],
    budget: int,
    schedule: Schedule,
    *,
    min_tokens: int,
    power: float = 2.0,
    base: float = 0.9,
) -> list[int]:
    """Split ``budget`` tokens across steps: ``min_tokens`` each, the rest in proportion to
    difficulty × decay, rounded by largest remainder so the shares sum to ``budget``.

    >>> allocate([2, 3, 1], 700, "polynomial", min_tokens=50)
    [369, 263, 68]
    """
    n = len(difficulties)
    spare = budget - n * min_tokens
    if n == 0 or spare < 0:
        raise ValueError(f"{budget} tokens cannot give {n} steps {min_tokens} each")
    weights = [
        c * decay(schedule, i, n, power=power, base=base) for i, c in enumerate(difficulties)
    ]
    total = sum(weights)
    exact = [spare * w / total for w in weights]
    shares = [math.floor(x) for x in exact]
    by_remainder = sorted(range(n), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in by_remainder[: spare - sum(shares)]:
        shares[i] += 1
    return [min_tokens + s for s in shares]


# -- prompts ------------------------------------------------------------------------------


def plan_messages(problem: str, max_steps: int) -> list[Message]:
    example = PLAN_USER.format(problem=PLAN_EXAMPLE_PROBLEM, max_steps=max_steps)
    return [
        {"role": "system", "content": PLAN_SYSTEM},
        {"role": "user", "content": example},
        {"role": "assistant", "content": PLAN_EXAMPLE_REPLY},
        {"role": "user", "content": PLAN_USER.format(problem=problem, max_steps=max_steps)},
    ]


def _solved(answered: Sequence[tuple[str, str]]) -> str:
    return "\n".join(f"{i}. {q}\n{a}" for i, (q, a) in enumerate(answered, 1))


def step_messages(
    problem: str, answered: Sequence[tuple[str, str]], question: str, hint_tokens: int | None
) -> list[Message]:
    """One sub-question, with the earlier (sub-question, sub-answer text) pairs, and the
    step's budget stated when ``hint_tokens`` is given."""
    context = f"Solved so far:\n{_solved(answered)}\n\n" if answered else ""
    hint = f"\nAnswer within {hint_tokens} tokens." if hint_tokens is not None else ""
    user = f"Problem: {problem}\n\n{context}Current sub-question: {question}{hint}"
    return [{"role": "system", "content": STEP_SYSTEM}, {"role": "user", "content": user}]


def synthesis_messages(problem: str, answered: Sequence[tuple[str, str]]) -> list[Message]:
    user = (
        f"Problem: {problem}\n\nSub-questions and their answers:\n{_solved(answered)}\n\n"
        f"{SYNTHESIS_INSTRUCTION}"
    )
    return solve_messages(user)


# -- the run ------------------------------------------------------------------------------


def _cap(ctx: Context, tokens: int) -> int:
    remaining = ctx.budget.remaining_tokens()
    return tokens if remaining is None else min(tokens, remaining)


async def _generate(
    ctx: Context, model: ModelRole, messages: list[Message], max_tokens: int, params: Params
) -> tuple[str, int, str | None]:
    generation = await model.generate(
        ModelRequest(
            messages=messages,
            max_tokens=max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=ctx.rng.randrange(2**31),
        )
    )
    choice = generation.choices[0]
    return choice.text.strip(), generation.usage.completion_tokens, choice.finish_reason


async def _solve_directly(
    problem: str, ctx: Context, model: ModelRole, max_tokens: int, params: Params
) -> StrategyResult:
    if max_tokens < 1:
        ctx.trace("budget_exhausted", what="tokens", phase="direct")
        return StrategyResult(answer=None, budget_exhausted=True)
    try:
        text, tokens, finish = await _generate(
            ctx, model, solve_messages(problem, None, ctx.conversation), max_tokens, params
        )
    except BudgetExhausted as exc:
        ctx.trace("budget_exhausted", what=exc.what, phase="direct")
        return StrategyResult(answer=None, budget_exhausted=True)
    answer = extract_answer(text)
    ctx.trace("answer", answer=answer, tokens=tokens, finish_reason=finish)
    return StrategyResult(answer=answer, text=text, details={"fallback": "direct"})


def _last_answer(sub_answers: Sequence[str | None]) -> str | None:
    return next((a for a in reversed(sub_answers) if a is not None), None)


async def run(problem: str, ctx: Context, params: Params) -> StrategyResult:
    planner = ctx.models[params.planner_role or params.role]
    solver = ctx.models[params.role]

    plan_limit = _cap(ctx, min(params.plan_tokens, params.total_tokens))
    if plan_limit < 1:
        ctx.trace("budget_exhausted", what="tokens", phase="plan")
        return StrategyResult(answer=None, budget_exhausted=True)
    try:
        plan_text, spent, _ = await _generate(
            ctx, planner, plan_messages(problem, params.max_steps), plan_limit, params
        )
    except BudgetExhausted as exc:
        ctx.trace("budget_exhausted", what=exc.what, phase="plan")
        return StrategyResult(answer=None, budget_exhausted=True)

    steps, dropped = parse_plan(plan_text, params.max_steps, ignore=PLAN_EXAMPLE)
    if not steps:
        ctx.trace("plan_unparsable", tokens=spent, text=plan_text[:500])
        return await _solve_directly(
            problem, ctx, solver, _cap(ctx, params.total_tokens - spent), params
        )
    ctx.trace(
        "plan",
        sub_questions=[s.question for s in steps],
        complexities=[s.difficulty for s in steps],
        rated=[s.rated for s in steps],
        dropped=dropped,
        tokens=spent,
    )

    available = _cap(ctx, params.total_tokens - spent) - params.synthesis_tokens
    if available < len(steps) * params.min_step_tokens:
        ctx.trace(
            "plan_unaffordable",
            steps=len(steps),
            available=available,
            min_step_tokens=params.min_step_tokens,
        )
        return await _solve_directly(
            problem, ctx, solver, available + params.synthesis_tokens, params
        )
    allocation = allocate(
        [s.difficulty for s in steps],
        available,
        params.schedule,
        min_tokens=params.min_step_tokens,
        power=params.decay_power,
        base=params.decay_base,
    )
    ctx.trace("allocation", schedule=params.schedule, tokens=allocation, total=available)

    answered: list[tuple[str, str]] = []
    sub_answers: list[str | None] = []
    details = {"steps": len(steps), "allocation": allocation}
    for number, (step, tokens) in enumerate(zip(steps, allocation, strict=True), 1):
        hint = tokens if params.budget_hint else None
        messages = step_messages(problem, answered, step.question, hint)
        try:
            text, used, finish = await _generate(ctx, solver, messages, tokens, params)
        except BudgetExhausted as exc:
            ctx.trace("budget_exhausted", what=exc.what, phase="step", step=number)
            best = _last_answer(sub_answers)
            return StrategyResult(answer=best, budget_exhausted=True, details=details)
        sub = extract_answer(text)
        ctx.trace(
            "sub_answer",
            step=number,
            answer=sub,
            tokens=used,
            allocated=tokens,
            finish_reason=finish,
        )
        answered.append((step.question, text))
        sub_answers.append(sub)

    try:
        text, used, finish = await _generate(
            ctx, solver, synthesis_messages(problem, answered), params.synthesis_tokens, params
        )
    except BudgetExhausted as exc:
        ctx.trace("budget_exhausted", what=exc.what, phase="synthesis")
        return StrategyResult(
            answer=_last_answer(sub_answers), budget_exhausted=True, details=details
        )
    answer = extract_answer(text)
    ctx.trace("synthesis", answer=answer, tokens=used, finish_reason=finish)
    if answer is None:
        answer = _last_answer(sub_answers)
        ctx.trace("answer_from_steps", answer=answer)
    return StrategyResult(answer=answer, text=text, details=details)
