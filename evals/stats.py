"""The numbers of a report: Wilson intervals, percentiles, cost-of-pass, Pareto frontiers."""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959963984540054
"""The standard normal's 97.5th percentile: a two-sided 95% interval."""


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion.

    Chosen over the normal ("Wald") interval because evals are small and accuracies
    often near 0 or 1, where Wald collapses to a zero-width interval; Wilson stays
    inside [0, 1] and keeps close to its nominal coverage at n = 20.

    >>> [round(x, 4) for x in wilson_interval(2, 4)]
    [0.15, 0.85]
    """
    if trials <= 0:
        return (0.0, 1.0)
    p = successes / trials
    z2 = z * z
    denominator = 1 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denominator
    margin = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denominator
    return (max(0.0, centre - margin), min(1.0, centre + margin))


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), ``q`` in [0, 100]."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def cost_of_pass(mean_cost: float | None, accuracy: float | None) -> float | None:
    """Expected cost of one correct answer: mean cost / accuracy; ``inf`` at accuracy 0."""
    if mean_cost is None or accuracy is None:
        return None
    if accuracy == 0:
        return math.inf
    return mean_cost / accuracy


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: lower x and higher y (accuracy).

    A point is dominated when another is at least as good on both axes and strictly
    better on one. Returned in increasing x, which is the order to draw the frontier.
    """
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (ox <= x and oy >= y) and (ox < x or oy > y)
            for j, (ox, oy) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))
