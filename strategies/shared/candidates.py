"""Candidate solutions for verifier loops: obtain N of them, then pick among scored ones.

Used by ``best_of_n`` and ``genrm`` (and ``rpc`` for its samples); reusable by any
strategy that generates several whole solutions and chooses one.

Obtaining (``obtain``): either ``n`` samples from a role — in calls of ``batch_size``
choices, issued together, every seed drawn before any call is awaited so a replay issues
the same journal keys — or ``n`` runs of a child strategy spec (``ctx.run``, one child
span each). Child runs go one after another: a child draws from ``ctx.rng`` between its
own awaits, so running children concurrently would make the draw order, hence the
journal keys, depend on timing. When the budget runs out, the candidates obtained so far
are kept and ``Candidates.exhausted`` says so.

Picking (``pick``), given each candidate's score (``None`` when it has none):
- ``max``: the highest-scored candidate. Ties go to the candidate whose answer more
  candidates share (agreement, counted over every candidate, scored or not), then to
  the first candidate.
- ``weighted_vote``: each answer gets the sum of its candidates' scores; the highest sum
  wins; ties go to the answer more candidates share, then to the answer seen first. The
  text returned is the answer's best-scored candidate.
- Candidates without a score, or without an extractable answer, never win over a scored
  candidate with an answer. When no candidate has both, the pick falls back to a
  majority vote over the answers of all candidates (first seen wins ties).
Scores are compared with a relative tolerance of 1e-9, so sums that differ only by float
rounding count as ties.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from pydantic import BaseModel

from strategies.protocol import BudgetExhausted, Choice, Context, Message, ModelRequest
from strategies.shared.answers import extract_answer

Aggregate = Literal["max", "weighted_vote"]
T = TypeVar("T")


@dataclass(frozen=True)
class Candidate:
    """One whole solution and its final answer."""

    index: int
    text: str
    answer: str | None
    source: Literal["sample", "child"]
    finish_reason: str | None = None
    choice: Choice | None = None
    """The sampled choice (with token logprobs when asked for); None from a child."""


@dataclass
class Candidates:
    items: list[Candidate] = field(default_factory=list)
    exhausted: str | None = None
    """What ran out (``BudgetExhausted.what``, or "child" when a child run reported an
    exhausted budget) if the budget stopped generation early; else None."""


async def settle(calls: Sequence[Awaitable[T]]) -> list[T | BudgetExhausted]:
    """Await calls issued together; each result, or the ``BudgetExhausted`` it raised.

    The budget is reserved in issue order, so under a tight budget the first calls run
    and the later ones fail at once; every paid call completes (and is journaled) before
    this returns. Any other error is raised, after all calls have finished.
    """
    results = await asyncio.gather(*calls, return_exceptions=True)
    settled: list[T | BudgetExhausted] = []
    for result in results:
        if isinstance(result, BudgetExhausted):
            settled.append(result)
        elif isinstance(result, BaseException):
            raise result
        else:
            settled.append(result)
    return settled


async def sample(
    ctx: Context,
    role: str,
    messages: list[Message],
    *,
    n: int,
    batch_size: int | None,
    max_tokens: int,
    temperature: float,
    top_p: float | None,
    logprobs: bool = False,
) -> tuple[list[Choice], str | None]:
    """``n`` choices from ``role`` in concurrent calls of ``batch_size`` (all of them in
    one call when None); returns the choices of the calls that ran, in issue order, and
    what ran out if some calls could not be paid."""
    size = batch_size or n
    sizes = [min(size, n - start) for start in range(0, n, size)]
    # Every request (and seed) exists before the first await: replay issues equal keys.
    requests = [
        ModelRequest(
            messages=messages,
            n=k,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=ctx.rng.randrange(2**31),
            logprobs=logprobs,
        )
        for k in sizes
    ]
    model = ctx.models[role]
    results = await settle([model.generate(r) for r in requests])
    choices: list[Choice] = []
    exhausted: str | None = None
    for result in results:
        if isinstance(result, BudgetExhausted):
            exhausted = exhausted or result.what
        else:
            choices.extend(result.choices)
    return choices, exhausted


async def obtain(
    problem: str,
    ctx: Context,
    *,
    n: int,
    role: str,
    generator: BaseModel | None,
    messages: list[Message],
    max_tokens: int,
    temperature: float,
    top_p: float | None,
    batch_size: int | None = None,
) -> Candidates:
    """``n`` candidates: samples from ``role``, or runs of the ``generator`` child spec.

    Traces one ``candidate`` event per candidate (index, answer, source, finish reason).
    """
    found = Candidates()
    if generator is None:
        choices, found.exhausted = await sample(
            ctx,
            role,
            messages,
            n=n,
            batch_size=batch_size,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
        )
        for choice in choices:
            found.items.append(
                Candidate(
                    index=len(found.items),
                    text=choice.text,
                    answer=extract_answer(choice.text),
                    source="sample",
                    finish_reason=choice.finish_reason,
                    choice=choice,
                )
            )
    else:
        for _ in range(n):
            try:
                result = await ctx.run(generator, problem)
            except BudgetExhausted as exc:
                found.exhausted = exc.what
                break
            text = result.text or (f"The answer is {result.answer}." if result.answer else "")
            if text.strip():
                answer = result.answer or extract_answer(text)
                found.items.append(Candidate(len(found.items), text, answer, "child"))
            if result.budget_exhausted:
                found.exhausted = "child"
                break
    for c in found.items:
        ctx.trace(
            "candidate",
            index=c.index,
            answer=c.answer,
            source=c.source,
            finish_reason=c.finish_reason,
        )
    return found


def distinct_texts(candidates: Sequence[Candidate]) -> dict[int, int]:
    """For each candidate with an answer, the index of the first candidate with the same
    text: equal texts need one verification, not several."""
    first: dict[str, int] = {}
    return {c.index: first.setdefault(c.text, c.index) for c in candidates if c.answer is not None}


@dataclass(frozen=True)
class Pick:
    index: int | None
    """The winning candidate, or None when nothing could be picked."""
    answer: str | None
    text: str
    score: float | None
    """The winner's own score (max) or its answer's summed score (weighted_vote)."""
    by_answer: dict[str, float]
    """Per answer: the best score (max) or the sum of scores (weighted_vote)."""
    tie_break: Literal["agreement", "first"] | None
    fallback: Literal["majority"] | None


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def majority(candidates: Sequence[Candidate]) -> Pick:
    """Majority vote over the candidates' answers; the first seen wins ties."""
    votes = Counter(c.answer for c in candidates if c.answer is not None)
    if not votes:
        return Pick(None, None, "", None, {}, None, "majority")
    # Counter keeps insertion order, and max() keeps the first of equal counts.
    answer = max(votes, key=lambda a: votes[a])
    winner = next(c for c in candidates if c.answer == answer)
    return Pick(winner.index, answer, winner.text, None, {}, None, "majority")


def pick(
    candidates: Sequence[Candidate], scores: Sequence[float | None], aggregate: Aggregate
) -> Pick:
    """The winning candidate given one score (or None) per candidate; see the module doc."""
    scored = [
        (c, c.answer, s)
        for c, s in zip(candidates, scores, strict=True)
        if s is not None and c.answer is not None
    ]
    if not scored:
        return majority(candidates)
    agreement = Counter(c.answer for c in candidates if c.answer is not None)
    by_answer: dict[str, float] = {}
    for _, answer, s in scored:
        if aggregate == "max":
            by_answer[answer] = max(by_answer.get(answer, s), s)
        else:
            by_answer[answer] = by_answer.get(answer, 0.0) + s
    top = max(by_answer.values())
    tied = [a for a, v in by_answer.items() if _close(v, top)]
    # "First": for max, the first candidate holding the top score; for weighted_vote,
    # the answer seen first (by_answer keeps first-seen order already).
    if aggregate == "max":
        tied.sort(key=lambda a: next(c.index for c, x, s in scored if x == a and _close(s, top)))
    most = max(agreement[a] for a in tied)
    agreeing = [a for a in tied if agreement[a] == most]
    answer = agreeing[0]
    best = max(s for _, x, s in scored if x == answer)
    winner = next(c for c, x, s in scored if x == answer and _close(s, best))
    tie_break = _tie_break(len(tied), len(agreeing))
    return Pick(winner.index, answer, winner.text, by_answer[answer], by_answer, tie_break, None)


def _tie_break(tied: int, after_agreement: int) -> Literal["agreement", "first"] | None:
    if tied <= 1:
        return None
    return "agreement" if after_agreement == 1 else "first"
