"""The Pareto plot's point numbers stay readable when strategies sit on one spot."""

from __future__ import annotations

from itertools import combinations

from evals.plots import _pyplot, place_numbers


def test_numbers_of_points_at_one_spot_do_not_overlap() -> None:
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    try:
        ax.set_xlim(0, 1200)
        ax.set_ylim(0, 1)
        # Three strategies at the same spend and accuracy, one nearby, one far away.
        points = [(110.0, 0.60), (110.0, 0.60), (110.0, 0.60), (112.0, 0.61), (1000.0, 0.3)]
        boxes = place_numbers(ax, points)
        assert len(boxes) == 5
        assert not any(a.overlaps(b) for a, b in combinations(boxes, 2))
        # The lone point keeps its number next to it.
        far = ax.transData.transform((1000.0, 0.3))
        assert 0 < boxes[4].x0 - far[0] < 20 and 0 < boxes[4].y0 - far[1] < 20
    finally:
        plt.close(figure)
