"""Pareto plots: accuracy (with its 95% interval) against what each strategy spends.

Written with matplotlib's Agg backend (files only, no display). The frontier — the
strategies no other one beats on both accuracy and spend — is a red step line through
red-ringed, filled points; dominated strategies are grey and hollow. Each point carries a
number, and a key under the axes names its strategy: specs are long and strategies of
equal spend sit close together, so names beside the points would overwrite each other.
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
        handles: list[Any] = []
        for i, (summary, x) in enumerate(points):
            y = summary.accuracy or 0.0
            low, high = summary.ci_low or 0.0, summary.ci_high or 0.0
            colour = "tab:blue" if i in front else "tab:gray"
            # Clamped: at 0 of n, Wilson's lower end comes out ~1e-17 above 0.
            yerr = [[max(0.0, y - low)], [max(0.0, high - y)]]
            handle = ax.errorbar(
                [x], [y], yerr=yerr, fmt="o", capsize=4, markersize=7,
                color=colour, markerfacecolor=colour if i in front else "white",
            )  # fmt: skip
            handles.append(handle)
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
        ax.set_xlim(0, widest * 1.15 if widest > 0 else 1.0)
        ax.set_ylim(-0.02, 1.05)
        place_numbers(ax, [(x, float(s.accuracy or 0.0)) for s, x in points])
        if points:
            # The key, under the axes: one line per strategy, its number first.
            figure.legend(
                handles, [textwrap.shorten(f"{i + 1}  {s.strategy}", 110) for i, (s, _) in
                          enumerate(points)],
                loc="upper left", bbox_to_anchor=(0.0, 0.0), fontsize=7.5, frameon=False,
                handletextpad=0.6,
            )  # fmt: skip
        ax.set_xlabel(axis.label)
        ax.set_ylabel("accuracy (95% Wilson interval)")
        ax.grid(True, alpha=0.3)
        ax.set_title(title, fontsize=10)
        figure.tight_layout()
        figure.savefig(path, bbox_inches="tight")  # "tight" takes in the key
    finally:
        plt.close(figure)


def place_numbers(ax: Any, points: list[tuple[float, float]]) -> list[Any]:
    """Write each point's number up and right of it, moved up past the numbers already
    written where they would overlap (measured as drawn, not estimated). Returns their
    boxes in display pixels."""
    renderer = ax.figure.canvas.get_renderer()
    placed: list[Any] = []
    for i, xy in enumerate(points):
        note = ax.annotate(
            str(i + 1), xy, textcoords="offset points", xytext=(6, 4), fontsize=8,
            fontweight="bold", annotation_clip=False,
        )  # fmt: skip
        box = note.get_window_extent(renderer)
        for step in range(1, 4 * len(points) + 1):
            if not any(box.overlaps(other) for other in placed):
                break
            note.set_position((6, 4 + 9 * step))
            box = note.get_window_extent(renderer)
        placed.append(box)
    return placed


def write_plots(summaries: list[Summary], out: Path, title: str) -> list[Path]:
    paths = []
    for axis in AXES:
        path = out / axis.file
        pareto_plot(summaries, axis, path, title)
        paths.append(path)
    return paths
