"""``rpc``: Reasoning-Pruning Perplexity Consistency — self-consistency weighted by the
model's own path probabilities, after pruning the low-probability paths.

Zhou, Tan, Li, Yao, Guo, Li and Ma, *A Theoretical Study on Bridging Internal Probability
and Self-Consistency for LLM Reasoning* (NeurIPS 2025; arXiv 2502.00511). Self-consistency
estimates an answer's probability by counting, which converges slowly; the model's own
path probability converges fast but is biased. RPC combines them, as implemented here
after the authors' reference code (``wpc_evaluator``):

1. Sample ``n`` reasoning paths with token logprobs. A path's probability is
   ``p = exp(mean token logprob)`` — length-normalised (the inverse perplexity), as the
   reference code does (its ``perplexities`` are per-path mean logprobs): the product of
   token probabilities would make long paths negligible whatever their content.
2. Reasoning Pruning: fit a two-component Weibull mixture to the paths' probabilities by
   maximum likelihood (the mixture weight bounded to [0.2, 0.8], shapes and scales
   >= 0.01, as in the reference code), and call the component with the higher mean the
   high-probability one. A path is pruned when it more likely belongs to the
   low-probability component *and* its probability is below the mean of all paths. The
   reference code fits with L-BFGS-B from a fixed start; this fits the same likelihood
   with EM started from the split at the mean (deterministic, no SciPy), so on
   ambiguous data the two may settle in different local optima. With fewer than two
   distinct probabilities there is nothing to separate and nothing is pruned.
3. Perplexity Consistency: each answer scores the summed probability of its remaining
   *distinct* paths — a path text sampled twice counts once, because the score estimates
   the probability mass of the paths that reach the answer, not how often they were
   drawn. The highest score wins; ties go to the answer seen first. The winner's share of
   all scores is reported as its confidence.

Paths without an extractable answer take part in the fit but vote for nothing. If pruning
would leave no path with an answer it is undone (traced). Servers that return no token
logprobs cannot give path probabilities: RPC then falls back to a plain majority vote
(self-consistency) and traces ``no_logprobs``.

Cost: ``n`` samples of up to ``max_tokens`` each, in calls of ``batch_size`` issued
together; the pruning and the vote cost no calls. Under a tight budget the calls that
could be paid are voted on (``budget_exhausted``).

Trace: ``path`` per sample (index, answer, tokens, total logprob, mean logprob,
probability, pruned, duplicate_of), ``prune`` (method, mean probability, the fitted
components, pruned indices, kept count, skipped/undone reasons), or ``no_logprobs``;
``budget_exhausted``; ``vote`` (method, scores per answer, answer, confidence, paths).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from strategies.protocol import Choice, Context, StrategyResult, role_field
from strategies.shared.answers import extract_answer
from strategies.shared.candidates import sample
from strategies.shared.prompts import solve_messages
from strategies.shared.scoring import path_probability


class Params(BaseModel):
    """Probability-weighted vote over ``n`` sampled paths after pruning unlikely ones."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["rpc"] = "rpc"
    role: str = role_field(default="small", description="Model role that samples the paths.")
    n: int = Field(default=8, ge=1, le=256, description="Reasoning paths to sample.")
    batch_size: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="Paths per call; calls are issued together. None: all in one call.",
    )
    temperature: float = Field(default=0.7, ge=0.0, le=2.0, description="Sampling temperature.")
    top_p: float | None = Field(default=0.95, gt=0.0, le=1.0, description="Nucleus sampling.")
    max_tokens: int = Field(default=512, ge=1, le=32768, description="Per path.")
    pruning: Literal["weibull", "none"] = Field(
        default="weibull",
        description="Reasoning Pruning rule: the paper's Weibull-mixture rule, or none "
        "(plain Perplexity Consistency, for ablation).",
    )
    system: str | None = Field(default=None, description="Replaces the default system prompt.")


# Bounds of the Weibull parameters. 0.01 is the reference code's lower bound; the upper
# bound on the shape stands in for "all values equal" (the likelihood is unbounded there).
K_MIN, K_MAX = 0.01, 1000.0
W_MIN, W_MAX = 0.2, 0.8
EM_ITERATIONS = 100
MAX_STEPS = 100


@dataclass(frozen=True)
class Weibull:
    shape: float
    log_scale: float

    def log_pdf(self, log_x: float) -> float:
        z = self.shape * (log_x - self.log_scale)
        if z > 700.0:  # (x / scale) ** shape overflows: the density is 0 here
            return -math.inf
        return (
            math.log(self.shape)
            - self.log_scale
            + (self.shape - 1.0) * (log_x - self.log_scale)
            - math.exp(z)
        )

    @property
    def log_mean(self) -> float:
        return self.log_scale + math.lgamma(1.0 + 1.0 / self.shape)

    def summary(self, weight: float) -> dict[str, float]:
        return {"weight": weight, "shape": self.shape, "scale": math.exp(self.log_scale)}


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def fit_weibull(
    log_x: Sequence[float], weights: Sequence[float], start: float = 1.0
) -> Weibull | None:
    """Weighted maximum-likelihood Weibull fit; None when the weights are all ~0.

    The shape k solves g(k) = sum(w x^k ln x) / sum(w x^k) - 1/k - sum(w ln x) / sum(w)
    = 0. g grows with k (g' = the x^k-weighted variance of ln x + 1/k^2 > 0), so Newton's
    method from ``start``, kept inside a shrinking bracket, finds the root within the
    bounds in a few steps.
    """
    pairs = [(lx, w) for lx, w in zip(log_x, weights, strict=True) if w > 1e-300]
    total = sum(w for _, w in pairs)
    if total <= 1e-12:
        return None
    mean_log = sum(w * lx for lx, w in pairs) / total

    def g(k: float) -> tuple[float, float]:
        top = max(k * lx for lx, _ in pairs)
        terms = [(w * math.exp(k * lx - top), lx) for lx, w in pairs]
        den = sum(e for e, _ in terms)
        m1 = sum(e * lx for e, lx in terms) / den
        m2 = sum(e * lx * lx for e, lx in terms) / den
        return m1 - 1.0 / k - mean_log, max(m2 - m1 * m1, 0.0) + 1.0 / (k * k)

    if g(K_MAX)[0] <= 0.0:
        shape = K_MAX
    elif g(K_MIN)[0] >= 0.0:
        shape = K_MIN
    else:
        lo, hi = K_MIN, K_MAX
        shape = min(max(start, K_MIN), K_MAX)
        for _ in range(MAX_STEPS):
            value, slope = g(shape)
            if abs(value) < 1e-12:
                break
            lo, hi = (shape, hi) if value < 0.0 else (lo, shape)
            step = shape - value / slope
            # Outside the bracket Newton is not converging: bisect (in log space).
            shape = step if lo < step < hi else math.sqrt(lo * hi)
            if hi - lo < 1e-10 * hi:
                break
    log_scale = (
        _logsumexp([math.log(w) + shape * lx for lx, w in pairs]) - math.log(total)
    ) / shape
    return Weibull(shape, log_scale)


@dataclass(frozen=True)
class Mixture:
    weight_high: float
    high: Weibull
    low: Weibull
    posterior_high: list[float]
    """Per value, P(it belongs to the high-probability component)."""


def _posteriors(log_x: Sequence[float], w: float, a: Weibull, b: Weibull) -> list[float]:
    out = []
    for lx in log_x:
        la, lb = math.log(w) + a.log_pdf(lx), math.log(1.0 - w) + b.log_pdf(lx)
        if la == -math.inf and lb == -math.inf:
            out.append(w)  # neither component explains it: the prior decides
        elif lb - la > 700.0:
            out.append(0.0)
        else:
            out.append(1.0 / (1.0 + math.exp(lb - la)))
    return out


def fit_mixture(probabilities: Sequence[float]) -> Mixture | None:
    """Two-component Weibull mixture by EM, started from the split at the mean; None when
    the values cannot be split (fewer than two distinct values)."""
    if len(set(probabilities)) < 2:
        return None
    log_x = [math.log(p) for p in probabilities]
    mean = sum(probabilities) / len(probabilities)
    resp = [1.0 if p >= mean else 0.0 for p in probabilities]
    a = fit_weibull(log_x, resp)
    b = fit_weibull(log_x, [1.0 - r for r in resp])
    assert a is not None and b is not None  # both sides of the mean hold a value
    w = min(max(sum(resp) / len(resp), W_MIN), W_MAX)
    for _ in range(EM_ITERATIONS):
        new = _posteriors(log_x, w, a, b)
        settled = max(abs(x - y) for x, y in zip(new, resp, strict=True)) < 1e-6
        resp = new
        w = min(max(sum(resp) / len(resp), W_MIN), W_MAX)
        a = fit_weibull(log_x, resp, a.shape) or a
        b = fit_weibull(log_x, [1.0 - r for r in resp], b.shape) or b
        if settled:
            break
    if a.log_mean < b.log_mean:
        a, b, w = b, a, 1.0 - w
    return Mixture(w, a, b, _posteriors(log_x, w, a, b))


@dataclass(frozen=True)
class Path:
    index: int
    text: str
    answer: str | None
    tokens: int
    logprob: float
    mean_logprob: float

    @property
    def probability(self) -> float:
        return math.exp(self.mean_logprob)


def _paths(choices: Sequence[Choice]) -> list[Path] | None:
    paths = []
    for i, choice in enumerate(choices):
        prob = path_probability(choice)
        if prob is None:
            return None
        paths.append(
            Path(i, choice.text, extract_answer(choice.text), prob.tokens, prob.total, prob.mean)
        )
    return paths


def prune(paths: Sequence[Path], method: str) -> tuple[set[int], dict[str, Any]]:
    """Indices of the pruned paths, and the ``prune`` event's attributes."""
    probabilities = [p.probability for p in paths]
    mean = sum(probabilities) / len(probabilities) if probabilities else 0.0
    info: dict[str, Any] = {"method": method, "mean_probability": mean, "components": None}
    mixture = fit_mixture(probabilities) if method == "weibull" else None
    pruned: set[int] = set()
    if method == "weibull" and mixture is None:
        info["skipped"] = "fewer than two distinct probabilities"
    if mixture is not None:
        info["components"] = {
            "high": mixture.high.summary(mixture.weight_high),
            "low": mixture.low.summary(1.0 - mixture.weight_high),
        }
        pruned = {
            p.index
            for p, post in zip(paths, mixture.posterior_high, strict=True)
            if post < 0.5 and p.probability < mean
        }
    if pruned and all(p.answer is None for p in paths if p.index not in pruned):
        info["undone"] = "no path with an answer would remain"
        pruned = set()
    info["pruned"] = sorted(pruned)
    info["kept"] = len(paths) - len(pruned)
    return pruned, info


def perplexity_consistency(
    paths: Sequence[Path], pruned: set[int]
) -> tuple[dict[str, float], set[int]]:
    """Per answer, the summed probability of its distinct unpruned paths (answers whose
    paths were all pruned score 0); and the indices of paths that repeat an earlier text."""
    scores: dict[str, float] = {}
    seen: set[str] = set()
    repeats: set[int] = set()
    for p in paths:
        if p.answer is None:
            continue
        scores.setdefault(p.answer, 0.0)
        if p.index in pruned:
            continue
        if p.text in seen:
            repeats.add(p.index)
            continue
        seen.add(p.text)
        scores[p.answer] += p.probability
    return scores, repeats


def _first_of(paths: Sequence[Path]) -> dict[int, int | None]:
    first: dict[str, int] = {}
    out: dict[int, int | None] = {}
    for p in paths:
        earlier = first.setdefault(p.text, p.index)
        out[p.index] = earlier if earlier != p.index else None
    return out


def _majority(choices: Sequence[Choice]) -> tuple[dict[str, float], str | None]:
    votes = Counter(a for a in (extract_answer(c.text) for c in choices) if a is not None)
    answer = max(votes, key=lambda a: votes[a]) if votes else None
    return {a: float(v) for a, v in votes.items()}, answer


async def run(problem: str, ctx: Context, params: Params) -> StrategyResult:
    choices, exhausted = await sample(
        ctx,
        params.role,
        solve_messages(problem, params.system, ctx.conversation),
        n=params.n,
        batch_size=params.batch_size,
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        logprobs=True,
    )
    if exhausted:
        ctx.trace("budget_exhausted", what=exhausted, paths=len(choices))
    paths = _paths(choices)
    if paths is None:
        ctx.trace("no_logprobs", paths=len(choices))
        scores, answer = _majority(choices)
        method = "majority"
        confidence = scores[answer] / sum(scores.values()) if answer else None
        text = next((c.text for c in choices if extract_answer(c.text) == answer), "")
        pruned: set[int] = set()
    else:
        pruned, info = prune(paths, params.pruning)
        duplicate_of = _first_of(paths)
        for p in paths:
            ctx.trace(
                "path",
                index=p.index,
                answer=p.answer,
                tokens=p.tokens,
                logprob=p.logprob,
                mean_logprob=p.mean_logprob,
                probability=p.probability,
                pruned=p.index in pruned,
                duplicate_of=duplicate_of[p.index],
            )
        ctx.trace("prune", **info)
        scores, _ = perplexity_consistency(paths, pruned)
        method = "perplexity_consistency"
        # max() keeps the first of equal scores, and scores are in first-seen order.
        answer = max(scores, key=lambda a: scores[a]) if scores else None
        total = sum(scores.values())
        confidence = scores[answer] / total if answer and total > 0 else None
        text = next((p.text for p in paths if p.answer == answer and p.index not in pruned), "")
    ctx.trace(
        "vote",
        method=method,
        scores=scores,
        answer=answer,
        confidence=confidence,
        paths=len(choices),
    )
    return StrategyResult(
        answer=answer,
        text=text,
        votes=Counter(a for a in (extract_answer(c.text) for c in choices) if a is not None),
        budget_exhausted=exhausted is not None,
        details={
            "method": method,
            "scores": scores,
            "confidence": confidence,
            "paths": len(choices),
            "pruned": sorted(pruned),
        },
    )
