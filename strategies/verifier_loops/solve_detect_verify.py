"""``solve_detect_verify``: verify a streamed solution as soon as it states an answer.

Zhong, Li, Xu, Wen, Li and Xu, *Solve-Detect-Verify: Inference-Time Scaling with
Flexible Generative Verifier* (arXiv 2505.11966, 2025). Reasoning models keep going
long after they have found the answer ("overthinking"); the pipeline watches the solver
for *completion points*, has a verifier check the solution at that point, stops the
solver when the check passes, and otherwise lets it go on — and when a finished
solution is judged wrong, feeds that back for one new, corrected attempt.

As implemented:
1. **Solve.** The solver (``role``) streams its solution.
2. **Detect.** A completion point is a sentence or line end (the text so far ends with
   ``.``, ``!`` or ``?`` and the next delta opens with whitespace, or the next delta
   opens a new line) where that last sentence states an answer explicitly — ``The answer
   is N``, ``Answer: N``, ``\\boxed{N}`` or ``#### N``. A bare last number is not a
   statement: "2 + 3 = 5." is a step, not a conclusion. Waiting for the delta after the
   terminator keeps "The answer is 5." from firing inside "5.5"; it costs one token at
   each point. (The paper detects hesitation words such as "Wait" and probes the model's
   log-probability that it is done; an explicit answer statement is the cheap, exact
   signal on chat models that are told to finish with one.)
3. **Verify.** At a completion point the verifier (``verifier_role``) judges the text so
   far with the shared generative verifier (``strategies.shared.verification``: P(Yes) from the
   verdict token). Score >= ``threshold``: the solver stream is left right there — the
   call is journaled as cancelled, charged for the tokens it produced — and that answer
   is returned (``early_stop``). Below, or unreadable: the solver goes on. At most
   ``max_checks`` such early checks per attempt.
4. **While the verifier runs, the solver stream is not read** (left open, no deltas
   consumed). The server keeps decoding meanwhile, so a rejected point loses no wall
   time — the buffered deltas are read at once afterwards — and an accepted one has the
   solver stopped at exactly the text that was verified. Reading on concurrently would
   save nothing but make the stop point depend on timing, which a replay cannot repeat.
5. **Feedback.** When the solver finishes, its whole solution is verified (always; not
   counted in ``max_checks``, and not repeated if the last early check saw the same
   text). Passed: done. Rejected: a follow-up solver turn gets its previous attempt and a
   note that a verifier judged it wrong (the paper's verifier writes a diagnosis; the
   shared verifier gives a verdict only), and the attempt is streamed and checked like
   the first — up to ``max_rounds`` such rounds.
6. Nothing passed (rounds or budget used up): the best-scored checked candidate, later
   ones winning ties (an unreadable verdict, or a finished attempt the budget could not
   check, scores 0).

Cost per attempt: one streamed solver call of up to ``max_tokens`` — stopped early when
a check passes — and at most ``max_checks + 1`` verifier calls of 4 tokens. The budget
is reserved before each call, so it is never exceeded; a verification the budget cannot
pay ends the checking, the solver is read to its end (its tokens are already reserved)
and the best answer so far is returned, marked ``budget_exhausted``.

Trace: ``completion_point`` (round, chars and tokens so far, candidate answer, at_end),
``verification`` (round, score, source, verified), ``checks_exhausted`` (round),
``early_stop`` (round, answer, solver tokens charged), ``feedback`` (round, previous
answer, score), ``budget_exhausted`` (what, round), ``final`` (answer, reason, rounds,
checks, score).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

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

FEEDBACK_PROMPT = (
    "A verifier checked your solution and judged it wrong. Find the mistake, then solve "
    "the problem again. Reason step by step, briefly, and finish with a line of the form "
    "'The answer is N.'"
)

_STATED = re.compile(r"\\boxed\s*\{|####|\banswer\s*(?:is\b|:|=)", re.IGNORECASE)
_TERMINATORS = (".", "!", "?")


class Params(BaseModel):
    """Stream the solver; verify at each stated answer; stop at the first that passes."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["solve_detect_verify"] = "solve_detect_verify"
    role: str = role_field(default="small", description="Model role that solves (streamed).")
    verifier_role: str = role_field(
        default="large", description="Model role that verifies candidate solutions."
    )
    threshold: float = Field(
        default=0.8, ge=0.0, le=1.0, description="Verifier score (P(Yes)) that accepts."
    )
    max_tokens: int = Field(default=512, ge=1, le=32768, description="Per solver attempt.")
    max_rounds: int = Field(
        default=1,
        ge=0,
        le=10,
        description="Most feedback rounds after a finished solution is judged wrong.",
    )
    max_checks: int = Field(
        default=4,
        ge=0,
        le=64,
        description="Most early verifications per attempt (the finished solution's is extra).",
    )
    temperature: float = Field(default=0.7, ge=0.0, le=2.0, description="Solver temperature.")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, description="Solver nucleus.")
    system: str | None = Field(default=None, description="Replaces the default system prompt.")


@dataclass(frozen=True)
class Check:
    """One verified (or, if the budget stopped it, unverified) candidate solution."""

    round: int
    text: str
    answer: str | None
    score: float | None

    def passes(self, threshold: float) -> bool:
        return self.score is not None and self.score >= threshold


@dataclass
class Run:
    """What the attempts have found so far."""

    candidates: list[Check] = field(default_factory=list)
    exhausted: bool = False

    def best(self) -> Check | None:
        # Later candidates win ties: the solver's later statement supersedes an earlier one.
        ranked = sorted(
            enumerate(self.candidates), key=lambda item: (item[1].score or 0.0, item[0])
        )
        return ranked[-1][1] if ranked else None


@dataclass(frozen=True)
class Attempt:
    text: str
    passed: Check | None
    early: bool
    last: Check | None
    """The check of the finished solution (None when it ended early or went unchecked)."""


def stated_answer(sentence: str) -> str | None:
    """The answer a sentence states explicitly, or None (a bare number states nothing)."""
    if _STATED.search(sentence) is None:
        return None
    return extract_answer(sentence)


def ends_sentence(before: str, delta: str) -> bool:
    """Whether ``before`` ends a sentence or a line, judged from the delta after it."""
    rest = delta.lstrip()
    if len(rest) == len(delta):
        return False
    return "\n" in delta[: len(delta) - len(rest)] or before.rstrip().endswith(_TERMINATORS)


def feedback_messages(problem: str, attempt: str, system: str | None) -> list[Message]:
    return [
        *solve_messages(problem, system),
        {"role": "assistant", "content": attempt},
        {"role": "user", "content": FEEDBACK_PROMPT},
    ]


class _Solver:
    """One job's attempts: streams the solver, verifies at completion points."""

    def __init__(self, problem: str, ctx: Context, params: Params) -> None:
        self.problem = problem
        self.ctx = ctx
        self.params = params
        self.state = Run()
        self.verifications = 0

    def out_of_budget(self, exc: BudgetExhausted, round_: int) -> None:
        self.state.exhausted = True
        self.ctx.trace("budget_exhausted", what=exc.what, round=round_)

    async def verify(
        self, round_: int, text: str, answer: str | None, *, tokens: int, at_end: bool
    ) -> Check:
        ctx, params = self.ctx, self.params
        ctx.trace(
            "completion_point",
            round=round_,
            chars=len(text),
            tokens=tokens,
            answer=answer,
            at_end=at_end,
        )
        seed = ctx.rng.randrange(2**31)
        verifier = ctx.models[params.verifier_role]
        verdict = (await judge(verifier, verify_messages(self.problem, text), seed=seed))[0]
        self.verifications += 1
        check = Check(round_, text, answer, verdict.score)
        ctx.trace(
            "verification",
            round=round_,
            score=verdict.score,
            source=verdict.source,
            verified=check.passes(params.threshold),
        )
        self.state.candidates.append(check)
        return check

    async def attempt(self, round_: int, messages: list[Message]) -> Attempt:
        ctx, params = self.ctx, self.params
        request = ModelRequest(
            messages=messages,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=ctx.rng.randrange(2**31),
        )
        text, sentence_start, received, checks = "", 0, 0, 0
        skipping = False
        last: Check | None = None
        stated: str | None = None
        passed: Check | None = None
        async with ctx.models[params.role].stream(request) as stream:
            async for delta in stream:
                before, text = text, text + delta
                received += 1
                if not ends_sentence(before, delta):
                    continue
                sentence, sentence_start = before[sentence_start:], len(before)
                answer = stated_answer(sentence)
                stated = answer or stated
                if answer is None or self.state.exhausted:
                    continue
                if checks >= params.max_checks:
                    if not skipping:
                        ctx.trace("checks_exhausted", round=round_, max_checks=params.max_checks)
                        skipping = True
                    continue
                checks += 1
                try:
                    last = await self.verify(round_, before, answer, tokens=received, at_end=False)
                except BudgetExhausted as exc:
                    self.out_of_budget(exc, round_)
                    continue
                if last.passes(params.threshold):
                    passed = last
                    break  # leaving the block stops the solver: journaled as cancelled
        if passed is not None:
            assert stream.result is not None
            ctx.trace(
                "early_stop",
                round=round_,
                answer=passed.answer,
                tokens=stream.result.usage.completion_tokens,
                chars=len(passed.text),
            )
            return Attempt(passed.text, passed, True, None)
        # The finished solution's answer is the last one it stated; a bare last number
        # only when it never stated one.
        answer = stated_answer(text[sentence_start:]) or stated or extract_answer(text)
        return await self.finished(round_, text, answer, last, received)

    async def finished(
        self, round_: int, text: str, answer: str | None, last: Check | None, received: int
    ) -> Attempt:
        """Verify a solution the solver ended itself (unless just checked or unpaid)."""
        if last is not None and last.text.strip() == text.strip():
            final: Check | None = last
        elif self.state.exhausted:
            self.state.candidates.append(Check(round_, text, answer, None))
            final = None
        else:
            try:
                final = await self.verify(round_, text, answer, tokens=received, at_end=True)
            except BudgetExhausted as exc:
                self.out_of_budget(exc, round_)
                self.state.candidates.append(Check(round_, text, answer, None))
                final = None
        passed = final if final is not None and final.passes(self.params.threshold) else None
        return Attempt(text, passed, False, final)


async def run(problem: str, ctx: Context, params: Params) -> StrategyResult:
    solver = _Solver(problem, ctx, params)
    messages = solve_messages(problem, params.system, ctx.conversation)
    round_ = 0
    passed: Check | None = None
    reason = "max_rounds"
    try:
        while True:
            async with ctx.span("attempt", round=round_):
                attempt = await solver.attempt(round_, messages)
            if attempt.passed is not None:
                passed = attempt.passed
                reason = "early_stop" if attempt.early else "verified"
                break
            if solver.state.exhausted:
                reason = "budget_exhausted"
                break
            if round_ >= params.max_rounds:
                break
            round_ += 1
            ctx.trace(
                "feedback",
                round=round_,
                previous_answer=attempt.last.answer if attempt.last else None,
                score=attempt.last.score if attempt.last else None,
            )
            messages = feedback_messages(problem, attempt.text, params.system)
    except BudgetExhausted as exc:  # the solver call itself could not be paid
        solver.out_of_budget(exc, round_)
        reason = "budget_exhausted"

    chosen = passed or solver.state.best()
    ctx.trace(
        "final",
        answer=chosen.answer if chosen else None,
        reason=reason,
        rounds=round_,
        checks=solver.verifications,
        score=chosen.score if chosen else None,
    )
    return StrategyResult(
        answer=chosen.answer if chosen else None,
        text=chosen.text if chosen else "",
        budget_exhausted=solver.state.exhausted,
        details={
            "stopped": reason,
            "rounds": round_,
            "verifications": solver.verifications,
            "score": chosen.score if chosen else None,
        },
    )
