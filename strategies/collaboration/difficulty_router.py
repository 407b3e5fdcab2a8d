"""``difficulty_router``: a cheap probe places the problem in easy / normal / hard, and
each class runs its own child strategy.

Difficulty-adaptive allocation of test-time compute: Snell, Lee, Xu and Kumar, *Scaling
LLM Test-Time Compute Optimally can be More Effective than Scaling Model Parameters*
(2024) choose the strategy per difficulty bin; Liu et al., *DiffAdapt:
Difficulty-Adaptive Reasoning for Token-Efficient LLM Inference* (2025) classify each
problem as easy / normal / hard with a light probe and pick a prompt, temperature and
length per class. DiffAdapt's probe is trained on the model's hidden states, which an
OpenAI-compatible server does not expose; the probes here read the small model's output
distribution instead (DiffAdapt's own observation is that this uncertainty tracks
difficulty), and need no training.

Probes, each on ``probe_role`` and each turned into a difficulty value (higher = harder):
- ``entropy``: the problem with the reply prefilled as "The answer is ", one greedy token
  with ``top_logprobs``: the entropy (nats, renormalised over the alternatives) of the
  model's first answer token when it must answer without reasoning. One 1-token call.
- ``attempt``: a short greedy attempt (``probe_tokens``) with logprobs; the value is its
  mean negative token logprob (nats per token; 0 = certain). One call.
- ``agreement``: ``probe_samples`` short attempts (temperature ``temperature``); the value
  is 1 - the leader's vote share (0 = unanimous). One call with ``n``.

value <= ``easy_max``: easy; value >= ``hard_min``: hard; otherwise normal (also when the
probe yields no value, e.g. a server without logprobs). Unset thresholds take the
probe's defaults: entropy 0.5 / 1.5 nats, attempt 0.15 / 0.4 nats per token (geometric
mean token probability 0.86 / 0.67), agreement 0.0 / 0.5.

The class's child spec then runs through ``ctx.run`` (``easy``: direct on small,
``normal``: self-consistency of 4 on small, ``hard``: self-consistency of 4 on large, by
default) and its result is the result. If the child ends with no answer because the
budget ran out, the probe's own answer (attempt / agreement) is returned instead.

Cost: the probe (see above), then the child's cost.

Trace: ``probe`` (probe, value, and what it saw: token, answer, votes), ``difficulty``
(level, value, easy_max, hard_min), then the child's span; ``budget_exhausted`` if the
probe cannot be paid.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from strategies.baselines import direct, self_consistency
from strategies.compose import ChildSpec
from strategies.protocol import BudgetExhausted, Context, ModelRequest, StrategyResult, role_field
from strategies.shared.answers import extract_answer
from strategies.shared.prompts import solve_messages
from strategies.shared.scoring import first_token_entropy, path_probability

Probe = Literal["entropy", "attempt", "agreement"]
Level = Literal["easy", "normal", "hard"]

ANSWER_PREFILL = "The answer is "
"""The entropy probe's prefilled reply: the next token is the answer's first token."""

DEFAULT_THRESHOLDS: dict[str, tuple[float, float]] = {
    "entropy": (0.5, 1.5),
    "attempt": (0.15, 0.4),
    "agreement": (0.0, 0.5),
}


class Params(BaseModel):
    """Probe the small model's uncertainty, then run the easy / normal / hard child."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["difficulty_router"] = "difficulty_router"
    probe_role: str = role_field(default="small", description="Model role that is probed.")
    probe: Probe = Field(
        default="entropy", description="'entropy', 'attempt' or 'agreement' (see above)."
    )
    easy_max: float | None = Field(
        default=None, ge=0.0, description="Difficulty at or below which a problem is easy."
    )
    hard_min: float | None = Field(
        default=None,
        ge=0.0,
        validate_default=True,
        description="Difficulty at or above which a problem is hard.",
    )
    top_logprobs: int = Field(
        default=10, ge=2, le=20, description="Alternatives read by the entropy probe."
    )
    probe_tokens: int = Field(
        default=128, ge=1, le=4096, description="Length of each attempt (attempt, agreement)."
    )
    probe_samples: int = Field(
        default=4, ge=2, le=32, description="Attempts sampled by the agreement probe."
    )
    temperature: float = Field(
        default=0.7, ge=0.0, le=2.0, description="Sampling temperature of the agreement probe."
    )
    easy: ChildSpec = Field(
        default_factory=lambda: direct.Params(role="small"),
        description="Strategy run on easy problems.",
    )
    normal: ChildSpec = Field(
        default_factory=lambda: self_consistency.Params(role="small", n=4),
        description="Strategy run on normal problems.",
    )
    hard: ChildSpec = Field(
        default_factory=lambda: self_consistency.Params(role="large", n=4),
        description="Strategy run on hard problems.",
    )
    system: str | None = Field(
        default=None, description="Replaces the default system prompt of the probe."
    )

    @field_validator("hard_min")
    @classmethod
    def _ordered(cls, hard_min: float | None, info: ValidationInfo) -> float | None:
        probe = info.data.get("probe", "entropy")
        default_easy, default_hard = DEFAULT_THRESHOLDS[probe]
        easy = info.data.get("easy_max")
        easy = default_easy if easy is None else easy
        hard = default_hard if hard_min is None else hard_min
        if easy > hard:
            raise ValueError(f"must be at least easy_max ({easy}); got {hard} for probe {probe!r}")
        return hard_min

    def thresholds(self) -> tuple[float, float]:
        default_easy, default_hard = DEFAULT_THRESHOLDS[self.probe]
        easy = default_easy if self.easy_max is None else self.easy_max
        hard = default_hard if self.hard_min is None else self.hard_min
        return easy, hard


@dataclass
class ProbeResult:
    value: float | None
    seen: dict[str, Any] = field(default_factory=dict)
    answer: str | None = None
    text: str = ""


async def probe_entropy(problem: str, ctx: Context, params: Params) -> ProbeResult:
    request = ModelRequest(
        messages=[
            *solve_messages(problem, params.system, ctx.conversation),
            {"role": "assistant", "content": ANSWER_PREFILL},
        ],
        max_tokens=1,
        temperature=0.0,
        logprobs=True,
        top_logprobs=params.top_logprobs,
        continue_final_message=True,
    )
    choice = (await ctx.models[params.probe_role].generate(request)).choices[0]
    return ProbeResult(first_token_entropy(choice), {"token": choice.text})


async def probe_attempt(problem: str, ctx: Context, params: Params) -> ProbeResult:
    request = ModelRequest(
        messages=solve_messages(problem, params.system, ctx.conversation),
        max_tokens=params.probe_tokens,
        temperature=0.0,
        logprobs=True,
    )
    choice = (await ctx.models[params.probe_role].generate(request)).choices[0]
    path = path_probability(choice)
    value = -path.mean if path is not None and path.tokens else None
    answer = extract_answer(choice.text)
    seen: dict[str, Any] = {"answer": answer, "tokens": path.tokens if path else None}
    return ProbeResult(value, seen, answer, choice.text)


async def probe_agreement(problem: str, ctx: Context, params: Params) -> ProbeResult:
    request = ModelRequest(
        messages=solve_messages(problem, params.system, ctx.conversation),
        n=params.probe_samples,
        max_tokens=params.probe_tokens,
        temperature=params.temperature,
        seed=ctx.rng.randrange(2**31),
    )
    generation = await ctx.models[params.probe_role].generate(request)
    answers = [extract_answer(c.text) for c in generation.choices]
    votes = Counter(a for a in answers if a is not None)
    leader = max(votes, key=lambda a: votes[a]) if votes else None
    share = votes[leader] / len(answers) if leader is not None else 0.0
    text = next(
        (c.text for c, a in zip(generation.choices, answers, strict=True) if a == leader), ""
    )
    return ProbeResult(1.0 - share, {"votes": dict(votes.most_common())}, leader, text)


PROBES = {"entropy": probe_entropy, "attempt": probe_attempt, "agreement": probe_agreement}


def level_of(value: float | None, params: Params) -> Level:
    easy_max, hard_min = params.thresholds()
    if value is None:
        return "normal"
    if value <= easy_max:
        return "easy"
    if value >= hard_min:
        return "hard"
    return "normal"


async def run(problem: str, ctx: Context, params: Params) -> StrategyResult:
    try:
        probed = await PROBES[params.probe](problem, ctx, params)
    except BudgetExhausted as exc:
        ctx.trace("budget_exhausted", what=exc.what, stage="probe")
        return StrategyResult(answer=None, budget_exhausted=True)
    value = None if probed.value is None else round(probed.value, 4)
    ctx.trace("probe", probe=params.probe, value=value, **probed.seen)
    level = level_of(probed.value, params)
    easy_max, hard_min = params.thresholds()
    ctx.trace("difficulty", level=level, value=value, easy_max=easy_max, hard_min=hard_min)
    spec = {"easy": params.easy, "normal": params.normal, "hard": params.hard}[level]
    try:
        result = await ctx.run(spec, problem)
    except BudgetExhausted as exc:  # a child that does not catch it itself
        ctx.trace("budget_exhausted", what=exc.what, stage=level)
        result = StrategyResult(answer=None, budget_exhausted=True)
    details = {"difficulty": level, "probe": params.probe, "value": value, "child": result.details}
    if result.answer is None and result.budget_exhausted and probed.answer is not None:
        ctx.trace("fallback", answer=probed.answer, source="probe")
        return StrategyResult(
            answer=probed.answer, text=probed.text, budget_exhausted=True, details=details
        )
    return result.model_copy(update={"details": details})
