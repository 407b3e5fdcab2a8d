"""``compute_optimal``: pick the strategy with the best expected accuracy that fits the
budget, per difficulty bin, from a measured table.

Snell, Lee, Xu and Kumar, *Scaling LLM Test-Time Compute Optimally can be More Effective
than Scaling Model Parameters* (2024): the best way to spend test-time compute depends on
the problem's difficulty, so estimate the difficulty first and then choose, per
difficulty bin, the strategy that maximises accuracy at the given compute. The paper
bins by the model's own pass rate; here the bins are the easy / normal / hard classes
of ``difficulty_router``'s probes (no training, one cheap call), and the accuracy and
cost of each strategy come from an eval table (``ponder eval`` results; ``ponder
calibrate compute_optimal`` turns one into a preset of this strategy).

Per problem:
1. If any table arm has a ``bin``, probe the difficulty on ``probe_role`` exactly as
   ``difficulty_router`` does (``probe``, ``easy_max``, ``hard_min``), or take the fixed
   ``difficulty``. A table without bins needs no probe: every problem uses the overall
   rows.
2. The budget is ``budget_tokens``, or else what is left of the job's token budget after
   the probe (no token budget: unlimited).
3. ``choose``: among the arms of the problem's bin (the overall rows, ``bin: null``, when
   the bin has none), those whose mean tokens fit the budget; the highest accuracy wins,
   ties to the cheaper. Nothing fits: no answer, ``budget_exhausted``, and the trace
   says which arm was cheapest.
4. Run the chosen arm's spec as a child (``ctx.run``); its result is the result.

Cost: the probe (if any), then the chosen child's cost.

Trace: ``probe`` and ``difficulty`` (when probed), then ``choice`` (level, budget,
label, accuracy, mean_tokens, fits: how many arms fit) or ``no_arm_fits``, then the
child's span.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from strategies.collaboration import difficulty_router
from strategies.collaboration.difficulty_router import PROBES, Level, Probe, level_of
from strategies.compose import ChildSpec
from strategies.protocol import BudgetExhausted, Context, StrategyResult, role_field


class TableArm(BaseModel):
    """One measured arm: a strategy spec with its accuracy and mean tokens (in a bin)."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(description="The arm's label in the eval table.")
    spec: ChildSpec = Field(description="The strategy spec that was measured.")
    bin: Level | None = Field(
        default=None, description="Difficulty bin of this row; null: all problems."
    )
    n: int = Field(ge=1, description="Problems the row was measured on.")
    accuracy: float = Field(ge=0.0, le=1.0, description="Fraction answered correctly.")
    mean_tokens: float = Field(ge=0.0, description="Mean completion tokens per problem.")


class NoArmFits(ValueError):
    """No arm of the table fits the budget (or the table has no row for the bin)."""


def choose(arms: Sequence[TableArm], budget_tokens: int | None, level: Level | None) -> TableArm:
    """The most accurate arm of ``level``'s bin whose mean tokens fit the budget.

    Args:
        arms: the table; rows with ``bin`` None are the overall numbers.
        budget_tokens: the most tokens one problem may spend; None: no limit.
        level: the problem's difficulty bin; None (or a bin without rows): overall rows.

    Raises:
        NoArmFits: nothing fits; the message names the cheapest arm.

    Example:
        >>> best = choose(table, 300, "hard")  # doctest: +SKIP
        >>> best.label
        'self_consistency n=4'
    """
    rows = [a for a in arms if level is not None and a.bin == level]
    if not rows:
        rows = [a for a in arms if a.bin is None]
    if not rows:
        where = f"bin {level!r}" if level is not None else "all problems (bin null)"
        raise NoArmFits(f"the table has no row for {where}")
    fits = [a for a in rows if budget_tokens is None or a.mean_tokens <= budget_tokens]
    if not fits:
        cheapest = min(rows, key=lambda a: a.mean_tokens)
        raise NoArmFits(
            f"no arm fits a budget of {budget_tokens} tokens; the cheapest is "
            f"{cheapest.label!r} at {cheapest.mean_tokens:.1f} mean tokens"
        )
    return max(fits, key=lambda a: (a.accuracy, -a.mean_tokens))


class Params(BaseModel):
    """Probe the difficulty, then run the most accurate measured arm that fits the budget."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["compute_optimal"] = "compute_optimal"
    arms: list[TableArm] = Field(
        min_length=1,
        description="The measured table (``ponder calibrate compute_optimal`` writes it).",
    )
    budget_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Tokens one problem may spend; null: what is left of the job budget.",
    )
    difficulty: Level | None = Field(
        default=None, description="A fixed difficulty bin instead of probing."
    )
    probe_role: str = role_field(default="small", description="Model role that is probed.")
    probe: Probe = Field(default="entropy", description="As in difficulty_router.")
    easy_max: float | None = Field(
        default=None, ge=0.0, description="As in difficulty_router (null: the probe's default)."
    )
    hard_min: float | None = Field(
        default=None, ge=0.0, description="As in difficulty_router (null: the probe's default)."
    )
    top_logprobs: int = Field(default=10, ge=2, le=20, description="As in difficulty_router.")
    probe_tokens: int = Field(default=128, ge=1, le=4096, description="As in difficulty_router.")
    probe_samples: int = Field(default=4, ge=2, le=32, description="As in difficulty_router.")
    temperature: float = Field(default=0.7, ge=0.0, le=2.0, description="As in difficulty_router.")
    system: str | None = Field(default=None, description="System prompt of the probe.")

    def router(self) -> difficulty_router.Params:
        """The probe's settings as ``difficulty_router`` params (validates the thresholds)."""
        return difficulty_router.Params(
            probe_role=self.probe_role,
            probe=self.probe,
            easy_max=self.easy_max,
            hard_min=self.hard_min,
            top_logprobs=self.top_logprobs,
            probe_tokens=self.probe_tokens,
            probe_samples=self.probe_samples,
            temperature=self.temperature,
            system=self.system,
        )


async def difficulty(problem: str, ctx: Context, params: Params) -> Level | None:
    """The problem's bin: fixed, probed, or None when the table has no bins."""
    if params.difficulty is not None:
        return params.difficulty
    if all(a.bin is None for a in params.arms):
        return None
    router = params.router()
    probed = await PROBES[router.probe](problem, ctx, router)
    value = None if probed.value is None else round(probed.value, 4)
    ctx.trace("probe", probe=router.probe, value=value, **probed.seen)
    level = level_of(probed.value, router)
    easy_max, hard_min = router.thresholds()
    ctx.trace("difficulty", level=level, value=value, easy_max=easy_max, hard_min=hard_min)
    return level


async def run(problem: str, ctx: Context, params: Params) -> StrategyResult:
    try:
        level = await difficulty(problem, ctx, params)
    except BudgetExhausted as exc:
        ctx.trace("budget_exhausted", what=exc.what, stage="probe")
        return StrategyResult(answer=None, budget_exhausted=True)
    budget = params.budget_tokens
    if budget is None:
        budget = ctx.budget.remaining_tokens()
    try:
        arm = choose(params.arms, budget, level)
    except NoArmFits as exc:
        ctx.trace("no_arm_fits", level=level, budget=budget, reason=str(exc))
        refusal = {"difficulty": level, "budget": budget, "error": str(exc)}
        return StrategyResult(answer=None, budget_exhausted=True, details=refusal)
    fits = sum(
        1 for a in params.arms if a.bin == arm.bin and (budget is None or a.mean_tokens <= budget)
    )
    ctx.trace(
        "choice",
        level=level,
        budget=budget,
        label=arm.label,
        accuracy=arm.accuracy,
        mean_tokens=arm.mean_tokens,
        fits=fits,
    )
    try:
        result = await ctx.run(arm.spec, problem)
    except BudgetExhausted as exc:
        ctx.trace("budget_exhausted", what=exc.what, stage="child")
        result = StrategyResult(answer=None, budget_exhausted=True)
    details: dict[str, Any] = {
        "difficulty": level,
        "budget": budget,
        "chosen": arm.label,
        "child": result.details,
    }
    return result.model_copy(update={"details": details})
