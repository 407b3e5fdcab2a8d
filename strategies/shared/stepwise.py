"""Step-level generation and step rewards, shared by the step-wise search strategies.

``particle_filter`` and ``beam_search`` grow solutions one reasoning step at a time and
score every partial solution with a generative verifier. This module holds what they
share:

- ``Partial``: a solution so far, as the exact assistant text a model continues.
- ``step_request``: a chat request that continues a partial solution by one step: the
  partial text is prefilled as the assistant message (``continue_final_message``) and
  generation stops at the step delimiter (a blank line by default).
- ``extend``: the partial solution after one generated step, and whether it finished.
- ``StepScorer``: the step reward, P(Yes) of "is the reasoning so far correct?" from the
  verifier role (``strategies.shared.verification`` with ``partial=True``), one call per
  distinct partial text.
- ``gather_calls``: run calls issued together and surface ``BudgetExhausted`` only after
  every one of them has returned, so no call is left running.

When is a solution finished? A step that states a final answer ("The answer is 5.",
``\\boxed{5}``, ``#### 5``), a continuation that is empty (the model ended at once), or
the step limit. OpenAI-compatible servers report ``finish_reason == "stop"`` both for
end-of-sequence and for a matched stop string, so a solution that ends without stating
an answer is only recognised on the next call, which returns nothing: one extra short
call, never a wrong cut.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, replace
from typing import Literal, TypeVar

from strategies.protocol import BudgetExhausted, Choice, Context, ModelRequest
from strategies.shared.answers import extract_answer
from strategies.shared.prompts import solve_messages
from strategies.shared.scoring import STEP_DELIMITER
from strategies.shared.verification import Verdict, judge, verify_messages

__all__ = [
    "NEUTRAL_REWARD",
    "STEP_DELIMITER",
    "Partial",
    "StepScorer",
    "extend",
    "gather_calls",
    "reward_of",
    "softmax",
    "states_final_answer",
    "step_request",
]

End = Literal["answer", "eos", "max_steps"]

NEUTRAL_REWARD = 0.5
"""The reward of a verdict that could not be read: no evidence either way, so it neither
favours nor penalises the partial solution."""

# An explicit final-answer statement. Narrower than ``extract_answer``, which falls back
# to the last number of any text and would end every step that mentions one.
_FINAL = re.compile(
    r"\\boxed\s*\{|^\s*####|\b(?:final answer|the answer is|answer\s*:)", re.IGNORECASE | re.M
)


def states_final_answer(step: str) -> bool:
    """True when ``step`` states a final answer (boxed, ``####`` or "the answer is")."""
    return _FINAL.search(step) is not None


@dataclass(frozen=True)
class Partial:
    """A solution so far. ``text`` is everything generated, ``sep`` what must follow it
    before the next step: the delimiter that stopped the last step (the server consumed
    it), or nothing after a step cut by ``max_tokens``, which resumes mid-step."""

    text: str = ""
    sep: str = ""
    steps: int = 0
    finished: bool = False
    end: End | None = None

    @property
    def prefill(self) -> str:
        """The assistant text a model continues."""
        return self.text + self.sep

    @property
    def answer(self) -> str | None:
        return extract_answer(self.text) if self.text else None


def step_request(
    problem: str,
    partial: Partial,
    *,
    n: int,
    max_tokens: int,
    temperature: float,
    seed: int,
    delimiter: str = STEP_DELIMITER,
    top_p: float | None = None,
    system: str | None = None,
) -> ModelRequest:
    """A request for ``n`` next steps of ``partial`` (the first step when it is empty)."""
    messages = solve_messages(problem, system)
    prefill = partial.prefill
    if prefill:
        messages = [*messages, {"role": "assistant", "content": prefill}]
    return ModelRequest(
        messages=messages,
        n=n,
        max_tokens=max_tokens,
        stop=[delimiter],
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        continue_final_message=bool(prefill),
    )


def extend(
    partial: Partial, choice: Choice, *, max_steps: int, delimiter: str = STEP_DELIMITER
) -> Partial:
    """``partial`` continued by one generated step (``choice``)."""
    piece = choice.text
    if not piece.strip():
        if choice.finish_reason == "length":
            # Only whitespace within the step budget: nothing said, but not finished.
            return replace(partial, text=partial.prefill + piece, sep="", steps=partial.steps + 1)
        # The model stopped straight away: the solution was already complete.
        return replace(partial, finished=True, end="eos")
    cut = choice.finish_reason == "length"
    text = (partial.prefill + piece).rstrip() if not cut else partial.prefill + piece
    steps = partial.steps + 1
    end: End | None = None
    if states_final_answer(piece):
        end = "answer"
    elif steps >= max_steps:
        end = "max_steps"
    sep = "" if cut else delimiter
    return Partial(text=text, sep=sep, steps=steps, finished=end is not None, end=end)


def reward_of(verdict: Verdict) -> float:
    return verdict.score if verdict.score is not None else NEUTRAL_REWARD


def softmax(values: Sequence[float], temperature: float) -> list[float]:
    """softmax(values / temperature), shifted by the maximum for numerical stability."""
    if not values:
        return []
    top = max(values)
    exps = [math.exp((v - top) / temperature) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


T = TypeVar("T")


async def gather_calls(calls: Sequence[Awaitable[T]]) -> list[T]:
    """Await calls issued together; all finish before any failure is raised.

    The budget is reserved in issue order, so under a tight budget the first calls run
    and later ones raise ``BudgetExhausted``: the paid ones complete (and are journaled)
    before the exhaustion reaches the strategy. Any other error wins over exhaustion.
    """
    results = await asyncio.gather(*calls, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    for error in errors:
        if not isinstance(error, BudgetExhausted):
            raise error
    if errors:
        raise errors[0]
    return [r for r in results if not isinstance(r, BaseException)]


class StepScorer:
    """Step rewards from a verifier role: P(Yes) that the reasoning so far is correct.

    The verifier judges the whole partial solution, so its score of the latest prefix is
    already an aggregate over the steps (the "last step" aggregation of a PRM). Equal
    partial texts are judged once per run: resampled or duplicated partial solutions
    often repeat, and a greedy judgement (temperature 0) would only repeat itself.
    """

    def __init__(self, ctx: Context, role: str, problem: str, *, max_tokens: int = 4) -> None:
        self.ctx = ctx
        self.role = role
        self.problem = problem
        self.max_tokens = max_tokens
        self.cache: dict[str, Verdict] = {}
        self.calls = 0

    async def score(self, texts: Sequence[str]) -> list[Verdict]:
        """One verdict per text; new distinct texts are judged concurrently."""
        fresh = list(dict.fromkeys(t for t in texts if t not in self.cache))
        # Seeds drawn for every call before any is awaited: replay issues the same keys.
        seeds = [self.ctx.rng.randrange(2**31) for _ in fresh]
        model = self.ctx.models[self.role]
        calls = [
            judge(
                model,
                verify_messages(self.problem, text, partial=True),
                seed=seed,
                max_tokens=self.max_tokens,
            )
            for text, seed in zip(fresh, seeds, strict=True)
        ]
        self.calls += len(calls)
        verdicts = await gather_calls(calls)
        for text, found in zip(fresh, verdicts, strict=True):
            self.cache[text] = found[0]
        return [self.cache[t] for t in texts]
