"""``particle_filter``: grow N solutions step by step, resampling them by step reward.

Puri et al., *A Probabilistic Inference Approach to Inference-Time Scaling of LLMs using
Particle-Based Monte Carlo Methods* (2025). Inference-time scaling is cast as
sequential Monte Carlo: the language model proposes, a process reward model (PRM)
supplies the likelihood, and particle filtering tracks the posterior over solutions
instead of greedily following the best-scored one (which a beam search does, and which
a noisy reward misleads).

As implemented:
1. ``particles`` empty solutions. Each step, every live particle is extended by one
   reasoning step (steps end at a blank line; ``strategies.shared.stepwise``). Particles with
   the same prefix — all of them at the first step, resampled copies later — share one
   call with ``n`` = their count; the calls of a step run concurrently.
2. Each extended particle gets a step reward: the verifier role's P(Yes) that the
   reasoning so far is correct (a generative PRM, ``strategies.shared.verification``). Equal
   partial solutions are judged once.
3. A particle whose step states a final answer, whose model ends, or that reaches
   ``max_steps`` is finished: it keeps its last reward and is never resampled away.
4. The live particles are resampled multinomially (``ctx.rng``) with weights
   softmax(reward / ``resample_temperature``). The paper uses the PRM reward as the
   likelihood; its authors' code (its_hub) takes logit(reward) as the log-weight, i.e.
   weights proportional to the odds r / (1 - r). Softmax of the reward itself with a
   temperature is the knob the issue asks for: 0.5 (default) weighs a 0.9-rewarded
   particle e^0.8 = 2.2 times a 0.5-rewarded one; lower sharpens towards greedy,
   higher flattens towards plain sampling.
5. Final answer, over the finished particles (weights = softmax of their last rewards):
   ``final="weight"`` takes the highest-weighted particle; ``final="vote"`` sums the
   weights per extracted answer (the weighted majority the paper also reports).
6. Anytime: when the budget runs out, the step in progress is dropped (its paid calls
   stay journaled) and the answer comes from the finished particles, or, if none has
   finished, from the partial solutions (their last stated number); ``final.finished``
   says which.

Cost: at most ``max_steps`` rounds; each round one call per distinct live prefix
(``particles`` choices of at most ``step_tokens``) on ``role``, and one verifier call
(4 tokens) per distinct partial solution on ``verifier_role``. So at most
``particles × max_steps`` steps and as many judgements.

Trace: ``step_reward`` (per step: slots, rewards, score sources, ends), ``finished``
(slot, reason, answer, reward), ``resample`` (live slots, weights, chosen ancestors),
``budget_exhausted``, ``final`` (mode, candidates, weights, votes, chosen slot).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from strategies.protocol import BudgetExhausted, Context, StrategyResult, role_field
from strategies.shared.scoring import STEP_DELIMITER
from strategies.shared.stepwise import (
    Partial,
    StepScorer,
    extend,
    gather_calls,
    reward_of,
    softmax,
    step_request,
)


class Params(BaseModel):
    """Particle filtering over reasoning steps with a generative step reward."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["particle_filter"] = "particle_filter"
    role: str = role_field(default="small", description="Model role that writes the steps.")
    verifier_role: str = role_field(
        default="large", description="Model role that scores partial solutions (P(Yes))."
    )
    particles: int = Field(default=4, ge=1, le=64, description="Number of particles N.")
    max_steps: int = Field(
        default=8, ge=1, le=64, description="Steps after which a particle is ended."
    )
    step_tokens: int = Field(
        default=128, ge=1, le=4096, description="Most tokens per generated step."
    )
    temperature: float = Field(
        default=0.8, ge=0.0, le=2.0, description="Sampling temperature of the steps."
    )
    top_p: float | None = Field(
        default=None, gt=0.0, le=1.0, description="Nucleus sampling of the steps."
    )
    resample_temperature: float = Field(
        default=0.5,
        gt=0.0,
        le=100.0,
        description="Softmax temperature turning rewards into resampling weights.",
    )
    final: Literal["weight", "vote"] = Field(
        default="weight",
        description="Pick the highest-weighted finished particle, or weighted-vote answers.",
    )
    step_delimiter: str = Field(
        default=STEP_DELIMITER, min_length=1, description="Text that ends a step."
    )
    system: str | None = Field(default=None, description="Replaces the default system prompt.")


async def _advance(
    problem: str,
    ctx: Context,
    params: Params,
    scorer: StepScorer,
    particles: list[Partial],
    live: list[int],
) -> tuple[dict[int, Partial], dict[int, float], dict[int, str]]:
    """One step for the ``live`` slots: extended partials, their rewards and sources."""
    groups: dict[str, list[int]] = defaultdict(list)
    for slot in live:
        groups[particles[slot].prefill].append(slot)
    requests = [
        step_request(
            problem,
            particles[slots[0]],
            n=len(slots),
            max_tokens=params.step_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=ctx.rng.randrange(2**31),
            delimiter=params.step_delimiter,
            system=params.system,
        )
        for slots in groups.values()
    ]
    model = ctx.models[params.role]
    generations = await gather_calls([model.generate(r) for r in requests])
    extended: dict[int, Partial] = {}
    for slots, generation in zip(groups.values(), generations, strict=True):
        for slot, choice in zip(slots, generation.choices, strict=True):
            extended[slot] = extend(
                particles[slot], choice, max_steps=params.max_steps, delimiter=params.step_delimiter
            )
    verdicts = await scorer.score([extended[s].text for s in live])
    rewards = {s: reward_of(v) for s, v in zip(live, verdicts, strict=True)}
    sources: dict[int, str] = {s: v.source for s, v in zip(live, verdicts, strict=True)}
    return extended, rewards, sources


def _resample(
    ctx: Context,
    step: int,
    live: list[int],
    particles: list[Partial],
    rewards: list[float],
    temperature: float,
) -> None:
    """Multinomial resampling of the ``live`` slots (in place) with ``ctx.rng``."""
    weights = softmax([rewards[s] for s in live], temperature)
    ancestors = ctx.rng.choices(live, weights=weights, k=len(live))
    ctx.trace("resample", step=step, slots=live, weights=weights, ancestors=ancestors)
    chosen = [(particles[a], rewards[a]) for a in ancestors]
    for slot, (partial, reward) in zip(live, chosen, strict=True):
        particles[slot], rewards[slot] = partial, reward


def _pick(
    ctx: Context, params: Params, particles: list[Partial], rewards: list[float]
) -> tuple[int | None, str | None, dict[str, float]]:
    """The final slot and answer, and the weighted votes per answer."""
    pool = [s for s, p in enumerate(particles) if p.finished]
    unfinished = not pool
    if unfinished:  # stopped early: the anytime answer comes from the partial solutions
        pool = [s for s, p in enumerate(particles) if p.text]
    if not pool:
        ctx.trace("final", mode=params.final, slots=[], answer=None, slot=None)
        return None, None, {}
    weights = softmax([rewards[s] for s in pool], params.resample_temperature)
    answers = [particles[s].answer for s in pool]
    votes: dict[str, float] = {}
    for answer, weight in zip(answers, weights, strict=True):
        if answer is not None:
            votes[answer] = votes.get(answer, 0.0) + weight
    # Highest weight first; ties go to the lower slot.
    order = sorted(range(len(pool)), key=lambda j: (-weights[j], pool[j]))
    best = order[0]
    if params.final == "vote" and votes:
        winner = max(votes, key=lambda a: votes[a])  # first-seen answer wins ties
        best = next(j for j in order if answers[j] == winner)
    slot = pool[best]
    ctx.trace(
        "final",
        mode=params.final,
        slots=pool,
        weights=weights,
        answers=answers,
        votes=votes,
        slot=slot,
        answer=answers[best],
        finished=not unfinished,
    )
    return slot, answers[best], votes


async def run(problem: str, ctx: Context, params: Params) -> StrategyResult:
    particles = [Partial() for _ in range(params.particles)]
    rewards = [0.0] * params.particles
    scorer = StepScorer(ctx, params.verifier_role, problem)
    exhausted = False
    step = 0
    while step < params.max_steps:
        live = [s for s, p in enumerate(particles) if not p.finished]
        if not live:
            break
        step += 1
        try:
            async with ctx.span("step", step=step, live=len(live)):
                extended, new_rewards, sources = await _advance(
                    problem, ctx, params, scorer, particles, live
                )
        except BudgetExhausted as exc:
            # The step is incomplete: the particles stay as they were after the last one.
            exhausted = True
            ctx.trace("budget_exhausted", what=exc.what, step=step)
            step -= 1
            break
        for slot in live:
            particles[slot], rewards[slot] = extended[slot], new_rewards[slot]
        ctx.trace(
            "step_reward",
            step=step,
            slots=live,
            rewards=[rewards[s] for s in live],
            sources=[sources[s] for s in live],
            ends=[particles[s].end for s in live],
        )
        for slot in live:
            if particles[slot].finished:
                ctx.trace(
                    "finished",
                    step=step,
                    slot=slot,
                    reason=particles[slot].end,
                    answer=particles[slot].answer,
                    reward=rewards[slot],
                )
        still = [s for s in live if not particles[s].finished]
        if len(still) > 1:  # one live particle would only be copied onto itself
            _resample(ctx, step, still, particles, rewards, params.resample_temperature)

    chosen, answer, votes = _pick(ctx, params, particles, rewards)
    counts: dict[str, int] = {}
    for partial in particles:
        if partial.finished and partial.answer is not None:
            counts[partial.answer] = counts.get(partial.answer, 0) + 1
    return StrategyResult(
        answer=answer,
        text=particles[chosen].text if chosen is not None else "",
        votes=counts,
        budget_exhausted=exhausted,
        details={
            "steps": step,
            "slot": chosen,
            "weighted_votes": votes,
            "finished": sum(p.finished for p in particles),
            "verifier_calls": scorer.calls,
        },
    )
