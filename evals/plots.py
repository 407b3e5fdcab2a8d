"""Pareto plots: accuracy (with its 95% interval) against what each strategy spends.

Written with matplotlib's Agg backend (files only, no display). The frontier — the
strategies no other one beats on both accuracy and spend — is a red step line through
red-ringed, filled points; dominated strategies are grey and hollow.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evals.results import Summary
from evals.stats import pareto_front


def _pyplot() -> Any:
    """pyplot on the Agg backend (files only), imported on first use: matplotlib takes
    over a second to import, which ``ponder eval`` errors and ``--help`` need not wait for."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass(frozen=True)
class Axis:
    file: str
    attribute: str
    label: str


AXES = (
    Axis("pareto_tokens.png", "mean_tokens", "mean completion tokens per problem"),
    Axis("pareto_latency.png", "latency_p50", "latency per problem, p50 (s)"),
    Axis("pareto_cost.png", "mean_cost", "mean cost per problem (pool prices)"),
)


def pareto_plot(summaries: list[Summary], axis: Axis, path: Path, title: str) -> None:
    points = [
        (s, float(getattr(s, axis.attribute)))
        for s in summaries
        if s.accuracy is not None and getattr(s, axis.attribute) is not None
    ]
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    try:
        xy = [(x, float(s.accuracy or 0.0)) for s, x in points]
        front = pareto_front(xy)
        for i, (summary, x) in enumerate(points):
            y = summary.accuracy or 0.0
            low, high = summary.ci_low or 0.0, summary.ci_high or 0.0
            colour = "tab:blue" if i in front else "tab:gray"
            # Clamped: at 0 of n, Wilson's lower end comes out ~1e-17 above 0.
            yerr = [[max(0.0, y - low)], [max(0.0, high - y)]]
            ax.errorbar(
                [x], [y], yerr=yerr, fmt="o", capsize=4, markersize=7,
                color=colour, markerfacecolor=colour if i in front else "white",
            )  # fmt: skip
            note = ax.annotate(
                textwrap.fill(summary.strategy, 30), (x, y), textcoords="offset points",
                xytext=(7, 5), fontsize=7.5, annotation_clip=False,
            )  # fmt: skip
            note.set_in_layout(False)  # a long label must not squeeze the axes
        if front:
            fx = [xy[i][0] for i in front]
            fy = [xy[i][1] for i in front]
            ax.step(fx, fy, where="post", color="tab:red", linewidth=1.2, zorder=1)
            ax.scatter(fx, fy, s=160, facecolors="none", edgecolors="tab:red",
                       label="Pareto frontier", zorder=3)  # fmt: skip
            ax.legend(loc="lower right", fontsize=8)
        widest = max((x for _, x in points), default=0.0)
        if points and widest == 0:
            ax.text(
                0.5, 0.04, "every strategy is at 0 (no prices configured?)",
                transform=ax.transAxes, ha="center", fontsize=8, color="tab:gray",
            )  # fmt: skip
        # Room on the right for the labels of the most expensive strategy.
        ax.set_xlim(0, widest * 1.45 if widest > 0 else 1.0)
        ax.set_ylim(-0.02, 1.05)
        ax.set_xlabel(axis.label)
        ax.set_ylabel("accuracy (95% Wilson interval)")
        ax.grid(True, alpha=0.3)
        ax.set_title(title, fontsize=10)
        figure.tight_layout()
        figure.savefig(path)
    finally:
        plt.close(figure)


def write_plots(summaries: list[Summary], out: Path, title: str) -> list[Path]:
    paths = []
    for axis in AXES:
        path = out / axis.file
        pareto_plot(summaries, axis, path, title)
        paths.append(path)
    return paths
