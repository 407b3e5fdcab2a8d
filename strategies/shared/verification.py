"""The generative verifier: one shared way to ask a model "is this right?" and read a score.

Used by best_of_n, genrm, refine, solve_detect_verify (whole solutions), particle_filter
and beam_search (a partial solution's last step: the step reward), and spec_reason (a
drafted step). The judge answers Yes or No first; the score is P(Yes) read from the
verdict token's logprobs (Zhang et al., *Generative Verifiers: Reward Modeling as
Next-Token Prediction*, 2024). Where a server returns no logprobs, or the verdict is not
a yes/no word, the score is parsed from the text (``Score: 7/10``, "correct") and the
verdict says so — a strategy can trace which source each score came from.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from strategies.protocol import Choice, Message, ModelRequest, ModelRole
from strategies.shared.scoring import parse_score, yes_probability

VERIFY_SYSTEM = (
    "You are a strict verifier of math solutions. Check the solution's reasoning and "
    "arithmetic. Reply Yes if the solution is correct, No if it is not."
)
STEP_SYSTEM = (
    "You are a strict verifier of math reasoning. Check only whether the reasoning so "
    "far is correct and useful. Reply Yes if it is, No if it is not."
)


class Verdict(BaseModel):
    """One judgement. ``score`` is in [0, 1], or None when it could not be read."""

    score: float | None
    source: Literal["logprobs", "parsed", "none"]
    text: str


def verify_messages(problem: str, solution: str, *, partial: bool = False) -> list[Message]:
    """Messages asking whether ``solution`` (or, if ``partial``, the reasoning so far) holds."""
    if partial:
        user = (
            f"Problem:\n{problem}\n\nReasoning so far:\n{solution}\n\n"
            "Is the reasoning so far correct? Answer Yes or No."
        )
        return [{"role": "system", "content": STEP_SYSTEM}, {"role": "user", "content": user}]
    user = (
        f"Problem:\n{problem}\n\nProposed solution:\n{solution}\n\n"
        "Is the proposed solution correct? Answer Yes or No."
    )
    return [{"role": "system", "content": VERIFY_SYSTEM}, {"role": "user", "content": user}]


def verdict_of(choice: Choice) -> Verdict:
    score = yes_probability(choice)
    if score is not None:
        return Verdict(score=score, source="logprobs", text=choice.text)
    parsed = parse_score(choice.text)
    if parsed is not None:
        return Verdict(score=parsed, source="parsed", text=choice.text)
    return Verdict(score=None, source="none", text=choice.text)


def verify_request(
    messages: list[Message],
    *,
    seed: int,
    n: int = 1,
    temperature: float = 0.0,
    max_tokens: int = 4,
    top_logprobs: int = 10,
) -> ModelRequest:
    """A judgement call: a few tokens with top logprobs (the verdict is the first word)."""
    return ModelRequest(
        messages=messages,
        n=n,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        logprobs=True,
        top_logprobs=top_logprobs,
    )


async def judge(
    model: ModelRole,
    messages: list[Message],
    *,
    seed: int,
    n: int = 1,
    temperature: float = 0.0,
    max_tokens: int = 4,
    top_logprobs: int = 10,
) -> list[Verdict]:
    """Ask ``model`` for ``n`` judgements of ``messages``; one ``Verdict`` per choice.

    Raises ``BudgetExhausted`` like any call; the caller decides what an unpaid
    verification means for its candidates.
    """
    request = verify_request(
        messages,
        seed=seed,
        n=n,
        temperature=temperature,
        max_tokens=max_tokens,
        top_logprobs=top_logprobs,
    )
    generation = await model.generate(request)
    return [verdict_of(choice) for choice in generation.choices]


def mean_score(verdicts: list[Verdict]) -> float | None:
    """Average of the readable scores; None if no verdict had one."""
    scores = [v.score for v in verdicts if v.score is not None]
    return sum(scores) / len(scores) if scores else None
