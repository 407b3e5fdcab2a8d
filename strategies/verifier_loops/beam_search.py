"""``beam_search``: step-level beam search guided by a generative step reward.

Snell et al., *Scaling LLM Test-Time Compute Optimally can be More Effective than
Scaling Model Parameters* (2024), §5: beam search against a process reward model
(PRM). A solution grows one reasoning step at a time (steps end at a blank line); at
each step every beam proposes ``expansions`` next steps, the PRM scores each extended
partial solution, and only the best ``beam_width`` survive.

As implemented:
1. The first step samples ``beam_width × expansions`` openings in one call (the paper's
   N initial samples: the root stands for ``beam_width`` beams sharing an empty prefix).
   Later, each active beam proposes ``expansions`` next steps in one call (``n``), the
   calls of a step issued together.
2. Each candidate's step reward is the verifier role's P(Yes) that the reasoning so far
   is correct (``strategies.shared.verification``, ``partial=True``); equal candidates are
   judged once and only the first of them competes.
3. Finished beams are retained: a candidate that states a final answer, whose model
   ends, or that reaches ``max_steps`` leaves the search and keeps its slot. So each
   step keeps the best ``beam_width - finished so far`` candidates, finished or not,
   ranked by reward (ties: earlier candidate); the search ends when every slot holds a
   finished beam or no active beam is left.
4. The answer comes from the best-scored finished beam (ties: the earlier finished).
5. Anytime: when the budget runs out, the step in progress is dropped (its paid calls
   stay journaled) and, if no beam has finished, the best active partial solution
   answers (its last stated number); ``final.finished`` says which.

Cost: at most ``max_steps`` steps; per step at most ``beam_width`` calls of
``expansions`` choices (``step_tokens`` each) on ``role`` — ``beam_width × expansions``
steps — plus one 4-token verifier call per distinct candidate on ``verifier_role``.

Trace: ``expand`` (step, per candidate: parent beam, reward, score source, end),
``prune`` (kept and dropped candidates with rewards; duplicates marked), ``finished``
(beam, reason, answer, reward), ``budget_exhausted``, ``final``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from strategies.protocol import BudgetExhausted, Context, StrategyResult, role_field
from strategies.shared.scoring import STEP_DELIMITER
from strategies.shared.stepwise import (
    Partial,
    StepScorer,
    extend,
    gather_calls,
    reward_of,
    step_request,
)


class Params(BaseModel):
    """Beam search over reasoning steps, ranked by a generative step reward."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["beam_search"] = "beam_search"
    role: str = role_field(default="small", description="Model role that writes the steps.")
    verifier_role: str = role_field(
        default="large", description="Model role that scores partial solutions (P(Yes))."
    )
    # 16 × 16 keeps the first call's n = beam_width × expansions within 256.
    beam_width: int = Field(default=2, ge=1, le=16, description="Beams kept after each step.")
    expansions: int = Field(
        default=4, ge=1, le=16, description="Candidate next steps sampled per beam."
    )
    max_steps: int = Field(default=8, ge=1, le=64, description="Steps after which a beam ends.")
    step_tokens: int = Field(
        default=128, ge=1, le=4096, description="Most tokens per generated step."
    )
    temperature: float = Field(
        default=0.8, ge=0.0, le=2.0, description="Sampling temperature of the steps."
    )
    top_p: float | None = Field(
        default=None, gt=0.0, le=1.0, description="Nucleus sampling of the steps."
    )
    step_delimiter: str = Field(
        default=STEP_DELIMITER, min_length=1, description="Text that ends a step."
    )
    system: str | None = Field(default=None, description="Replaces the default system prompt.")


@dataclass(frozen=True)
class Beam:
    partial: Partial
    reward: float
    source: str
    parent: int


async def _expand(
    problem: str, ctx: Context, params: Params, scorer: StepScorer, active: list[Beam]
) -> list[Beam]:
    """Every active beam's candidate next steps, scored, in beam then choice order."""
    # The root stands for beam_width beams with the same (empty) prefix: one call.
    root = len(active) == 1 and not active[0].partial.text
    width = params.expansions * (params.beam_width if root else 1)
    requests = [
        step_request(
            problem,
            beam.partial,
            n=width,
            max_tokens=params.step_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=ctx.rng.randrange(2**31),
            delimiter=params.step_delimiter,
            system=params.system,
        )
        for beam in active
    ]
    model = ctx.models[params.role]
    generations = await gather_calls([model.generate(r) for r in requests])
    partials: list[tuple[int, Partial]] = [
        (i, extend(beam.partial, c, max_steps=params.max_steps, delimiter=params.step_delimiter))
        for i, (beam, generation) in enumerate(zip(active, generations, strict=True))
        for c in generation.choices
    ]
    verdicts = await scorer.score([p.text for _, p in partials])
    return [
        Beam(partial=p, reward=reward_of(v), source=v.source, parent=i)
        for (i, p), v in zip(partials, verdicts, strict=True)
    ]


def _prune(
    ctx: Context, step: int, candidates: list[Beam], slots: int
) -> tuple[list[int], list[int]]:
    """Indices of the candidates kept (best first) and dropped; traces ``prune``."""
    seen: set[str] = set()
    unique: list[int] = []
    duplicates: list[int] = []
    for j, beam in enumerate(candidates):
        (duplicates if beam.partial.text in seen else unique).append(j)
        seen.add(beam.partial.text)
    ranked = sorted(unique, key=lambda j: (-candidates[j].reward, j))
    kept, dropped = ranked[:slots], ranked[slots:] + duplicates

    def row(j: int) -> dict[str, Any]:
        return {"candidate": j, "reward": candidates[j].reward, "duplicate": j in duplicates}

    ctx.trace(
        "prune",
        step=step,
        slots=slots,
        kept=[row(j) for j in kept],
        dropped=[row(j) for j in sorted(dropped)],
    )
    return kept, dropped


async def run(problem: str, ctx: Context, params: Params) -> StrategyResult:
    scorer = StepScorer(ctx, params.verifier_role, problem)
    active = [Beam(partial=Partial(), reward=0.0, source="none", parent=-1)]
    finished: list[Beam] = []
    exhausted = False
    step = 0
    while active and step < params.max_steps:
        step += 1
        try:
            async with ctx.span("step", step=step, beams=len(active)):
                candidates = await _expand(problem, ctx, params, scorer, active)
        except BudgetExhausted as exc:
            exhausted = True
            ctx.trace("budget_exhausted", what=exc.what, step=step)
            step -= 1
            break
        ctx.trace(
            "expand",
            step=step,
            beams=len(active),
            candidates=[
                {
                    "parent": c.parent,
                    "reward": c.reward,
                    "source": c.source,
                    "end": c.partial.end,
                }
                for c in candidates
            ],
        )
        kept, _ = _prune(ctx, step, candidates, params.beam_width - len(finished))
        active = []
        for j in kept:
            beam = candidates[j]
            if beam.partial.finished:
                finished.append(beam)
                ctx.trace(
                    "finished",
                    step=step,
                    beam=len(finished) - 1,
                    candidate=j,
                    reason=beam.partial.end,
                    answer=beam.partial.answer,
                    reward=beam.reward,
                )
            else:
                active.append(beam)

    # Anytime: without a finished beam the best partial solution answers.
    complete = bool(finished)
    pool = finished if complete else [b for b in active if b.partial.text]
    best = max(pool, key=lambda b: b.reward, default=None)  # max keeps the first of ties
    answer = best.partial.answer if best is not None else None
    ctx.trace(
        "final",
        answer=answer,
        reward=best.reward if best is not None else None,
        beam=pool.index(best) if best is not None else None,
        finished=complete,
        rewards=[b.reward for b in finished],
    )
    return StrategyResult(
        answer=answer,
        text=best.partial.text if best is not None else "",
        budget_exhausted=exhausted,
        details={
            "steps": step,
            "finished": len(finished),
            "reward": best.reward if best is not None else None,
            "verifier_calls": scorer.calls,
        },
    )
