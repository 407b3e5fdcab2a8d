"""``self_consistency``: sample several reasoning paths, majority-vote their final answers.

Wang et al., *Self-Consistency Improves Chain of Thought Reasoning in Language Models*
(ICLR 2023). Cost: ``n`` samples of up to ``max_tokens`` each.

Adaptive mode (Aggarwal et al., *Let's Sample Step by Step: Adaptive-Consistency for
Efficient Reasoning and Coding with LLMs*, EMNLP 2023) samples in batches and stops as
soon as either
- the leader cannot be overturned: its lead over the runner-up exceeds the samples
  still allowed, so more samples cannot change the answer (exact, free saving); or
- the vote is confident: under a Beta(leader + 1, runner-up + 1) posterior on the
  leader's share of the two-way contest, P(share > 1/2) >= ``confidence``. This is the
  paper's Beta stopping criterion; 0.95 is its recommended setting, which saved 2-4x
  samples at under 0.1 point of accuracy loss in the paper's experiments.
``min_samples`` guards against stopping on a single lucky agreement.

Samples whose answer cannot be extracted vote for nothing. Ties go to the answer that
reached the tied count first (stable, deterministic).

Answer kinds (``strategies.shared.answer_kinds``): numbers and JSON answers (canonical,
schema-valid) are counted as they are. Tool calls go through its_hub's hierarchical
vote: call or answer, then which functions, then their canonical arguments. Free text
has no key to count beyond exact matches: when the samples differ, Universal
Self-Consistency (Chen et al., 2023) asks the same role, greedily, which response is
most consistent with the others, and the trace records its pick and its words.

Executed voting (``executor``: a configured tool such as ``python``): each sample is a
program (the Program-of-Thoughts prompt) that the tool runs, and a sample votes for the
number its run printed — the repeated-sampling-plus-execution recipe of Brown et al.,
*Large Language Monkeys* (2024). A run that fails or prints no number abstains rather
than voting for a guess: as *FLaws* shows, an imperfect check that must always answer
caps accuracy. Each abstention is in the trace (``sample`` with
``abstained``). Numbers only.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from math import comb
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from strategies.protocol import (
    AnswerKind,
    BudgetExhausted,
    Choice,
    Context,
    ModelRequest,
    StrategyResult,
    role_field,
    tool_field,
)
from strategies.shared.answer_kinds import (
    Answers,
    Response,
    parse_usc_choice,
    response_of,
    usc_messages,
    vote_tool_calls,
)
from strategies.shared.programs import PROGRAM_SYSTEM, answer_of, program_of
from strategies.shared.prompts import solve_messages

ANSWER_KINDS: tuple[AnswerKind, ...] = ("number", "json", "tool_calls", "text")


class Params(BaseModel):
    """Majority vote over ``n`` samples; optionally stop early once the vote is settled."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["self_consistency"] = "self_consistency"
    role: str = role_field(default="small", description="Model role that samples.")
    n: int = Field(default=8, ge=1, le=256, description="Most samples to draw.")
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    top_p: float | None = Field(default=0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(default=512, ge=1, le=32768, description="Per sample.")
    adaptive: bool = Field(default=False, description="Stop sampling once the vote is settled.")
    batch_size: int = Field(default=4, ge=1, le=256, description="Samples per call (adaptive).")
    min_samples: int = Field(
        default=3, ge=1, description="Never stop on confidence before this many (or n)."
    )
    confidence: float = Field(
        default=0.95, gt=0.5, lt=1.0, description="Beta stopping threshold (adaptive)."
    )
    system: str | None = Field(default=None, description="Replaces the default system prompt.")
    executor: str | None = tool_field(
        default=None,
        description="A tool that runs each sample as a program; samples vote with what "
        "their run printed, a failed run abstains (numbers only).",
    )


def leader_share_confidence(leader: int, runner_up: int) -> float:
    """P(p > 1/2) for p ~ Beta(leader + 1, runner_up + 1), exactly, for integer counts.

    Uses the identity I_x(a, b) = P(Binomial(a + b - 1, x) >= a) for integers a, b.
    """
    a, b = leader + 1, runner_up + 1
    trials = a + b - 1
    below = sum(comb(trials, k) for k in range(a))
    return float(below / 2**trials)


def ranked(votes: Counter[str], first_seen: dict[str, int]) -> list[tuple[str, int]]:
    return sorted(votes.items(), key=lambda item: (-item[1], first_seen[item[0]]))


def stop_reason(
    votes: Counter[str], first_seen: dict[str, int], drawn: int, params: Params
) -> str | None:
    """Why adaptive sampling may stop now, or None to keep sampling."""
    if drawn >= params.n:
        return "n_reached"
    if not votes:
        return None
    order = ranked(votes, first_seen)
    leader = order[0][1]
    runner_up = order[1][1] if len(order) > 1 else 0
    if leader - runner_up > params.n - drawn:
        return "leader_cannot_be_overturned"
    enough = drawn >= min(params.min_samples, params.n)
    if enough and leader_share_confidence(leader, runner_up) >= params.confidence:
        return "confident"
    return None


async def run(problem: str, ctx: Context, params: Params) -> StrategyResult:
    model = ctx.models[params.role]
    answers = Answers.of(ctx.conversation)
    if params.executor is not None and answers.kind != "number":
        ctx.trace("refused", reason=f"executed voting answers numbers, not {answers.kind}")
        return StrategyResult(answer=None, details={"error": "executor needs number answers"})
    system = params.system or (PROGRAM_SYSTEM if params.executor else None)
    messages = solve_messages(problem, system, ctx.conversation)
    votes: Counter[str] = Counter()
    first_seen: dict[str, int] = {}
    responses: list[Response] = []
    keys: list[str | None] = []
    drawn = 0
    exhausted = False
    reason: str | None = None
    batch = params.batch_size if params.adaptive else params.n

    while drawn < params.n:
        size = min(batch, params.n - drawn)
        request = ModelRequest(
            messages=messages,
            n=size,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=ctx.rng.randrange(2**31),
            **ctx.conversation.request_fields(),
        )
        try:
            generation = await model.generate(request)
        except BudgetExhausted as exc:
            exhausted = True
            ctx.trace("budget_exhausted", what=exc.what, samples=drawn)
            break
        batch_keys = await _keys(ctx, params, answers, generation.choices)
        for choice, (key, extra) in zip(generation.choices, batch_keys, strict=True):
            response = response_of(choice)
            ctx.trace("sample", index=drawn, answer=key, finish_reason=choice.finish_reason,
                      **extra)  # fmt: skip
            responses.append(response)
            keys.append(key)
            if key is not None:
                votes[key] += 1
                first_seen.setdefault(key, drawn)
            drawn += 1
        if params.adaptive:
            reason = stop_reason(votes, first_seen, drawn, params)
            if reason is not None:
                break

    order = ranked(votes, first_seen)
    stopped = reason or ("budget_exhausted" if exhausted else "n_reached")
    winner = await _winner(problem, ctx, params, answers, responses, keys, order, exhausted)
    chosen = responses[winner] if winner is not None else None
    answer = None
    if winner is not None and chosen is not None:
        # An executed sample's answer is what its run printed, not what its text says.
        answer = keys[winner] if params.executor else answers.answer(chosen)
    ctx.trace("vote", votes=dict(order), answer=answer, samples=drawn, stopped=stopped)
    return StrategyResult(
        answer=answer,
        text=chosen.text if chosen is not None else "",
        votes=dict(order),
        budget_exhausted=exhausted,
        details={"samples": drawn, "stopped": reason or ("budget" if exhausted else "n_reached")},
        tool_calls=list(chosen.calls) or None if chosen is not None else None,
    )


async def _winner(
    problem: str,
    ctx: Context,
    params: Params,
    answers: Answers,
    responses: list[Response],
    keys: list[str | None],
    order: list[tuple[str, int]],
    exhausted: bool,
) -> int | None:
    """The index of the response that wins, by the answer kind's rule."""
    if not order:
        return None
    if answers.kind == "tool_calls":
        verdict = vote_tool_calls(responses)
        ctx.trace("tool_call_vote", **verdict.trace())
        return verdict.index
    leader = keys.index(order[0][0])
    if answers.kind != "text" or len(order) == 1 or exhausted:
        return leader
    return await _usc_pick(problem, ctx, params, responses, keys, leader)


async def _usc_pick(
    problem: str,
    ctx: Context,
    params: Params,
    responses: list[Response],
    keys: list[str | None],
    fallback: int,
) -> int:
    """Universal Self-Consistency: one greedy call names the most consistent response."""
    voters = [i for i, k in enumerate(keys) if k is not None]
    request = ModelRequest(
        messages=usc_messages(problem, [responses[i].text for i in voters]),
        max_tokens=64,
        temperature=0.0,
        seed=ctx.rng.randrange(2**31),
    )
    try:
        generation = await ctx.models[params.role].generate(request)
    except BudgetExhausted:
        ctx.trace("usc_choice", index=fallback, reason="budget exhausted: the plurality wins")
        return fallback
    said = generation.choices[0].text
    picked = parse_usc_choice(said, len(voters))
    index = voters[picked] if picked is not None else fallback
    ctx.trace("usc_choice", index=index, named=picked, said=said.strip()[:500])
    return index


async def _keys(
    ctx: Context, params: Params, answers: Answers, choices: list[Choice]
) -> list[tuple[str | None, dict[str, Any]]]:
    """What each sample votes for, and what the trace says of it. With an executor, the
    batch's programs run concurrently (their journal keys taken in sample order)."""
    if params.executor is None:
        out: list[tuple[str | None, dict[str, Any]]] = []
        for choice in choices:
            response = response_of(choice)
            key = answers.key(response)
            out.append((key, {} if key is not None else {"problem": answers.problem(response)}))
        return out
    tool = ctx.tools[params.executor]
    runs = await asyncio.gather(*(tool.call({"code": program_of(c.text)}) for c in choices))
    keyed: list[tuple[str | None, dict[str, Any]]] = []
    for run in runs:
        printed = answer_of(run.output) if run.ok else None
        if printed is None:
            why = (run.error or "printed no number")[-200:]
            keyed.append((None, {"abstained": why}))
        else:
            keyed.append((printed, {"executed": True}))
    return keyed
