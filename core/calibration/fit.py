"""Fitting thresholds from replays: glimp_router's ``tau``, difficulty_router's
``easy_max`` / ``hard_min``, spec_reason's ``threshold`` and cascade's ``min_agreement``.

Candidates come from the data: the first-token entropies the source jobs' ``route``
events recorded (glimp_router), the probe values of the problems (difficulty_router),
the judge's scores in the ``judgement`` events (spec_reason), the small stage's vote
shares in the ``agreement`` events (cascade).
Between two neighbouring observed values every threshold routes alike, so the candidates
are the midpoints between neighbours, plus one below the lowest and one above the
highest value (at most ``MAX_CUTS`` of them, by quantile, on large sets).

Objective (``Objective``): among the candidates scored on every problem, the best
accuracy; every candidate within ``tolerance`` of it qualifies, and the cheapest of
those wins: the fewest large-model tokens (glimp_router, spec_reason, cascade; for
difficulty_router the tokens of roles other than the probe's, then all tokens);
remaining ties go to the larger threshold. With ``target_large_share`` (glimp_router,
spec_reason: steps written by the large model; cascade: problems escalated) only
candidates whose large share is at most the target qualify, and the most accurate of
them wins.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from core.calibration.replay import Replayed, Source, replay
from core.db import repo
from core.errors import InvalidInput
from core.runtime import Runtime
from core.specs import validate_spec
from strategies.collaboration import cascade, difficulty_router, glimp_router, spec_reason

MAX_CUTS = 41
LEVELS = ("easy", "normal", "hard")


@dataclass(frozen=True)
class Objective:
    tolerance: float = 0.0
    """Accuracy (a fraction: 0.02 = 2 points) a candidate may give up for cost."""
    target_large_share: float | None = None
    """glimp_router and spec_reason: most steps the large model may write (a fraction)."""
    live: bool = False
    """Call the model for journal misses instead of leaving them uncovered."""


@dataclass
class Candidate:
    values: dict[str, float]
    problems: int
    covered: int = 0
    correct: int = 0
    tokens: int = 0
    large_tokens: int = 0
    large_steps: int = 0
    steps: int = 0
    live_calls: int = 0
    job_ids: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.covered == self.problems

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.covered if self.covered else None

    @property
    def mean_tokens(self) -> float | None:
        return self.tokens / self.covered if self.covered else None

    @property
    def mean_large_tokens(self) -> float | None:
        return self.large_tokens / self.covered if self.covered else None

    @property
    def large_share(self) -> float | None:
        return self.large_steps / self.steps if self.steps else None

    def to_json(self) -> dict[str, Any]:
        return {
            **self.values,
            "coverage": f"{self.covered}/{self.problems}",
            "accuracy": self.accuracy,
            "mean_tokens": self.mean_tokens,
            "mean_large_tokens": self.mean_large_tokens,
            "large_share": self.large_share,
            "live_calls": self.live_calls,
        }


@dataclass
class SpecCandidate(Candidate):
    """A spec_reason threshold: also the judge's verdicts and the estimated latency."""

    accepted: int = 0
    rejected: int = 0
    latency_ms: float = 0.0
    """Summed over covered problems: the recorded model latency on the critical path
    (``critical_path_ms``)."""

    @property
    def acceptance(self) -> float | None:
        judged = self.accepted + self.rejected
        return self.accepted / judged if judged else None

    @property
    def mean_latency_ms(self) -> float | None:
        return self.latency_ms / self.covered if self.covered else None

    def to_json(self) -> dict[str, Any]:
        return {
            **super().to_json(),
            "accepted": self.accepted,
            "rejected": self.rejected,
            "acceptance": self.acceptance,
            "mean_latency_ms": self.mean_latency_ms,
        }


@dataclass
class Calibration:
    kind: str
    spec: dict[str, Any]
    """The fitted spec, concrete (every default filled in)."""
    defaults: dict[str, float]
    """The thresholds the base spec had (what the fit replaced)."""
    chosen: Candidate
    candidates: list[Candidate]
    problems: int
    skipped: list[str]
    objective: Objective
    live_calls: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "fitted": self.chosen.values,
            "defaults": self.defaults,
            "accuracy": self.chosen.accuracy,
            "problems": self.problems,
            "skipped_problems": self.skipped,
            "live_calls": self.live_calls,
            "objective": {
                "tolerance": self.objective.tolerance,
                "target_large_share": self.objective.target_large_share,
                "live": self.objective.live,
            },
            "candidates": [c.to_json() for c in self.candidates],
            "spec": self.spec,
        }


def cuts(values: Sequence[float], upper: float | None = None) -> list[float]:
    """Midpoints between neighbouring distinct values, one cut below and one above."""
    distinct = sorted(set(values))
    if len(distinct) > MAX_CUTS - 1:
        step = (len(distinct) - 1) / (MAX_CUTS - 2)
        distinct = sorted({distinct[round(i * step)] for i in range(MAX_CUTS - 1)})
    out = [distinct[0] / 2]
    out += [(a + b) / 2 for a, b in itertools.pairwise(distinct)]
    out.append(distinct[-1] + 0.5)
    if upper is not None:
        out = [min(c, upper) for c in out]
    return sorted({round(c, 4) for c in out})


def pick(
    candidates: list[Candidate],
    objective: Objective,
    cost: Callable[[Candidate], tuple[float, ...]],
    source_field: str,
) -> Candidate:
    eligible = [c for c in candidates if c.complete and c.accuracy is not None]
    if not eligible:
        most = max((c.covered for c in candidates), default=0)
        total = candidates[0].problems if candidates else 0
        raise InvalidInput(
            f"{source_field}: no candidate threshold is covered by the journals on every "
            f"problem (best: {most} of {total}); pass --live to call the model for the "
            "misses, or run the dataset at more thresholds first",
            field=source_field,
        )
    if objective.target_large_share is not None:
        target = objective.target_large_share
        eligible = [c for c in eligible if (c.large_share or 0.0) <= target + 1e-9]
        if not eligible:
            raise InvalidInput(
                f"target_large_share: no candidate keeps the large model's share of steps "
                f"at or below {target}",
                field="target_large_share",
            )
    tolerance = 0.0 if objective.target_large_share is not None else objective.tolerance
    best = max(c.accuracy or 0.0 for c in eligible)
    good = [c for c in eligible if (c.accuracy or 0.0) >= best - tolerance - 1e-9]
    return min(good, key=lambda c: (cost(c), tuple(-v for v in c.values.values())))


def _observed(
    sources: Sequence[Source], event: str, key: str, *, source_field: str, missing: str
) -> list[float]:
    """Every ``key`` value the sources' ``event`` events recorded: a fit's candidates."""
    values = [
        float(a[key])
        for s in sources
        for name, a in s.events
        if name == event and a.get(key) is not None
    ]
    if not values:
        raise InvalidInput(
            f"{source_field}: its journaled jobs have no {missing}", field=source_field
        )
    return values


def _maximum(params: type[BaseModel], name: str) -> float:
    """A threshold's upper bound, as its strategy declares it."""
    return float(params.model_json_schema()["properties"][name]["maximum"])


def _spec_of(base: dict[str, Any], kind: str) -> dict[str, Any]:
    if base.get("kind") != kind:
        raise InvalidInput(
            f"strategy: the base spec is a {base.get('kind')!r} spec, not {kind!r}",
            field="strategy.kind",
        )
    return validate_spec(dict(base)).model_dump(mode="json")


async def calibrate_glimp(
    rt: Runtime,
    sources: Sequence[Source],
    base: dict[str, Any],
    objective: Objective,
    *,
    tenant: str,
    source_field: str,
    skipped: Sequence[str] = (),
) -> Calibration:
    """Fit glimp_router's ``tau`` (see the module docstring)."""
    spec = _spec_of(base, "glimp_router")
    entropies = _observed(
        sources, "route", "entropy", source_field=source_field,
        missing="glimp_router route events with an entropy to fit tau to",
    )  # fmt: skip
    upper = _maximum(glimp_router.Params, "tau")
    large = str(spec["large_role"])
    candidates: list[Candidate] = []
    for tau in cuts(entropies, upper):
        cand = Candidate({"tau": tau}, len(sources))
        for source in sources:
            done = await replay(
                rt, source, {**spec, "tau": tau}, live=objective.live, tenant=tenant
            )
            _add(cand, done, large)
            cand.large_steps += int(done.details.get("to_large", 0))
            cand.steps += int(done.details.get("to_large", 0)) + int(
                done.details.get("to_small", 0)
            )
        candidates.append(cand)
    chosen = pick(candidates, objective, lambda c: (c.mean_large_tokens or 0.0,), source_field)
    fitted = validate_spec({**spec, "tau": chosen.values["tau"]}).model_dump(mode="json")
    return Calibration(
        kind="glimp_router",
        spec=fitted,
        defaults={"tau": float(spec["tau"])},
        chosen=chosen,
        candidates=candidates,
        problems=len(sources),
        skipped=list(skipped),
        objective=objective,
        live_calls=sum(c.live_calls for c in candidates),
    )


def _add(cand: Candidate, done: Replayed, large_role: str | None) -> None:
    cand.job_ids.append(done.job_id)
    cand.live_calls += done.live_calls
    if not done.covered:
        return
    cand.covered += 1
    cand.correct += done.correct
    cand.tokens += done.completion_tokens
    if large_role is not None:
        cand.large_tokens += done.tokens.get(large_role, 0)


async def calibrate_difficulty(
    rt: Runtime,
    sources: Sequence[Source],
    base: dict[str, Any],
    objective: Objective,
    *,
    tenant: str,
    source_field: str,
    skipped: Sequence[str] = (),
) -> Calibration:
    """Fit difficulty_router's ``easy_max`` and ``hard_min``.

    Each problem is replayed once per distinct child spec, with that child in all three
    slots (the probe runs as usual): that yields the probe's value and what each level's
    child would have answered, and every threshold pair is then scored from that table
    without further replays.
    """
    if objective.target_large_share is not None:
        raise InvalidInput(
            "target_large_share: applies to glimp_router and spec_reason only",
            field="target_large_share",
        )
    spec = _spec_of(base, "difficulty_router")
    children = {level: json.dumps(spec[level], sort_keys=True) for level in LEVELS}
    outcomes: dict[str, dict[str, Replayed]] = {}  # child spec json -> problem id -> replay
    live_calls = 0
    for child in dict.fromkeys(children.values()):
        forced = {**spec, **{level: json.loads(child) for level in LEVELS}}
        outcomes[child] = {}
        for source in sources:
            done = await replay(rt, source, forced, live=objective.live, tenant=tenant)
            outcomes[child][source.id] = done
            live_calls += done.live_calls
    values: dict[str, float | None] = {}
    for source in sources:
        seen = [o[source.id].details.get("value") for o in outcomes.values()]
        found = [v for v in seen if v is not None]
        values[source.id] = float(found[0]) if found else None
    known = [v for v in values.values() if v is not None]
    if not known:
        raise InvalidInput(
            f"{source_field}: the probe gave no difficulty value on any problem "
            "(a server without logprobs?), so there is nothing to fit thresholds to",
            field=source_field,
        )
    points = cuts(known)
    candidates: list[Candidate] = []
    for i, easy_max in enumerate(points):
        for hard_min in points[i:]:
            cand = Candidate({"easy_max": easy_max, "hard_min": hard_min}, len(sources))
            for source in sources:
                level = _level(values[source.id], easy_max, hard_min)
                done = outcomes[children[level]][source.id]
                _add(cand, done, None)
                if done.covered:  # "large": any role but the probed one
                    cand.large_tokens += sum(
                        n for role, n in done.tokens.items() if role != spec["probe_role"]
                    )
            candidates.append(cand)
    # The large model's tokens are what a router saves (each costs several of the probed
    # model's); among equals, the fewest tokens in all.
    chosen = pick(
        candidates,
        objective,
        lambda c: (c.mean_large_tokens or 0.0, c.mean_tokens or 0.0),
        source_field,
    )
    fitted = validate_spec({**spec, **chosen.values}).model_dump(mode="json")
    router = difficulty_router.Params.model_validate(spec)
    easy_default, hard_default = router.thresholds()
    return Calibration(
        kind="difficulty_router",
        spec=fitted,
        defaults={"easy_max": easy_default, "hard_min": hard_default},
        chosen=chosen,
        candidates=candidates,
        problems=len(sources),
        skipped=list(skipped),
        objective=objective,
        live_calls=live_calls,
    )


def _level(value: float | None, easy_max: float, hard_min: float) -> str:
    # As difficulty_router.level_of.
    if value is None:
        return "normal"
    if value <= easy_max:
        return "easy"
    if value >= hard_min:
        return "hard"
    return "normal"


async def calibrate_spec_reason(
    rt: Runtime,
    sources: Sequence[Source],
    base: dict[str, Any],
    objective: Objective,
    *,
    tenant: str,
    source_field: str,
    skipped: Sequence[str] = (),
) -> Calibration:
    """Fit spec_reason's acceptance ``threshold`` from the judge's recorded scores.

    A draft is accepted when its score is at least the threshold, so between two
    neighbouring observed scores every threshold decides alike: the candidates are the
    midpoints (``cuts``; the threshold is at most 9). Each is replayed on every problem;
    the cost is the large model's tokens (its judgements and the steps it wrote).
    """
    spec = _spec_of(base, "spec_reason")
    scores = _observed(
        sources, "judgement", "score", source_field=source_field,
        missing="spec_reason judgement events with a score to fit the threshold to",
    )  # fmt: skip
    upper = _maximum(spec_reason.Params, "threshold")
    large = str(spec["large_role"])
    candidates: list[Candidate] = []
    for threshold in cuts(scores, upper):
        cand = SpecCandidate({"threshold": threshold}, len(sources))
        fitted = {**spec, "threshold": threshold}
        for source in sources:
            done = await replay(rt, source, fitted, live=objective.live, tenant=tenant)
            _add(cand, done, large)
            if not done.covered:
                continue
            steps_by = done.details.get("steps_by") or {}
            cand.large_steps += int(steps_by.get(large, 0))
            cand.steps += int(done.details.get("steps", 0))
            cand.accepted += int(done.details.get("accepted", 0))
            cand.rejected += int(done.details.get("rejected", 0))
            cand.latency_ms += await job_critical_path_ms(
                rt, done.job_id, large, bool(spec["pipeline"])
            )
        candidates.append(cand)
    chosen = pick(candidates, objective, lambda c: (c.mean_large_tokens or 0.0,), source_field)
    fitted_spec = validate_spec({**spec, **chosen.values}).model_dump(mode="json")
    return Calibration(
        kind="spec_reason",
        spec=fitted_spec,
        defaults={"threshold": float(spec["threshold"])},
        chosen=chosen,
        candidates=candidates,
        problems=len(sources),
        skipped=list(skipped),
        objective=objective,
        live_calls=sum(c.live_calls for c in candidates),
    )


async def calibrate_cascade(
    rt: Runtime,
    sources: Sequence[Source],
    base: dict[str, Any],
    objective: Objective,
    *,
    tenant: str,
    source_field: str,
    skipped: Sequence[str] = (),
) -> Calibration:
    """Fit cascade's ``min_agreement`` from the small stage's recorded vote shares.

    A problem escalates when its leader's share is below the threshold, so between two
    neighbouring observed shares every threshold decides alike: the candidates are the
    midpoints (``cuts``; at most 1). A run at a high threshold covers every lower one:
    it escalated a superset of the problems, so a lower threshold's replay finds all its
    large-stage calls in the journal. Cost: the large model's tokens; the large share is
    the share of problems escalated.
    """
    spec = _spec_of(base, "cascade")
    shares = _observed(
        sources, "agreement", "share", source_field=source_field,
        missing="cascade agreement events with a vote share to fit min_agreement to",
    )  # fmt: skip
    upper = _maximum(cascade.Params, "min_agreement")
    large = str(spec["large_role"])
    candidates: list[Candidate] = []
    for threshold in cuts(shares, upper):
        cand = Candidate({"min_agreement": threshold}, len(sources))
        fitted = {**spec, "min_agreement": threshold}
        for source in sources:
            done = await replay(rt, source, fitted, live=objective.live, tenant=tenant)
            _add(cand, done, large)
            if done.covered:
                cand.steps += 1
                cand.large_steps += int(bool(done.details.get("escalated")))
        candidates.append(cand)
    chosen = pick(candidates, objective, lambda c: (c.mean_large_tokens or 0.0,), source_field)
    return Calibration(
        kind="cascade",
        spec=validate_spec({**spec, **chosen.values}).model_dump(mode="json"),
        defaults={"min_agreement": float(spec["min_agreement"])},
        chosen=chosen,
        candidates=candidates,
        problems=len(sources),
        skipped=list(skipped),
        objective=objective,
        live_calls=sum(c.live_calls for c in candidates),
    )


@dataclass(frozen=True)
class CallTime:
    """One model call of a replay, as ``critical_path_ms`` needs it."""

    step: str | None
    """The id of the ``step`` span it was made in."""
    role: str
    judge: bool
    latency_ms: float


def critical_path_ms(calls: Sequence[CallTime], large_role: str, pipeline: bool) -> float:
    """The model latency a spec_reason job waits for, from its calls in issue order.

    Calls run one after another, except that with ``pipeline`` the small model's
    speculative draft of the next step runs during the judgement: in a step, a small
    call issued after the judge overlaps it, so the pair costs the longer of the two.
    """
    total = sum(c.latency_ms for c in calls)
    if not pipeline:
        return total
    judges: dict[str | None, CallTime] = {}
    for call in calls:
        if call.judge and call.role == large_role:
            judges[call.step] = call
        elif call.role != large_role and call.step in judges:
            total -= min(judges.pop(call.step).latency_ms, call.latency_ms)
    return total


async def job_critical_path_ms(rt: Runtime, job_id: str, large_role: str, pipeline: bool) -> float:
    """``critical_path_ms`` of a finished replay, from its model-call spans: a hit
    carries the latency recorded by the job that made the call, a live call its own."""
    async with rt.sessions() as session:
        spans = await repo.list_spans(session, job_id)
        calls = await repo.list_calls(session, job_id)
    judgements = {
        c.key[:16]
        for c in calls
        if (c.request or {}).get("max_tokens") == 1 and (c.request or {}).get("logprobs")
    }
    steps = {s.id for s in spans if s.kind == "span" and s.name == "step"}
    timed: list[CallTime] = []
    for span in spans:
        if span.kind != "model_call":
            continue
        a = span.attributes or {}
        latency = a.get("recorded_latency_ms", a.get("latency_ms"))
        timed.append(
            CallTime(
                step=span.parent_id if span.parent_id in steps else None,
                role=str(a.get("role")),
                judge=a.get("key") in judgements,
                latency_ms=float(latency or 0.0),
            )
        )
    return critical_path_ms(timed, large_role, pipeline)
