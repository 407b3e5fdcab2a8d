"""Calibration from traces (``ponder calibrate``, docs/calibration.md).

- ``replay``: a problem's pooled journal (every journaled job on it) and replays of a
  spec over it, strict (zero model calls, or a miss) or live (misses called, counted);
- ``fit``: glimp_router's ``tau`` and difficulty_router's thresholds from those replays;
- ``table``: the compute-optimal table (accuracy and mean tokens per arm and difficulty
  bin) from an eval's ``results.json``, and the choice from it.
"""
