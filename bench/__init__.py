"""Benchmarks: scripts runnable as ``python bench/NAME.py`` and the ``ponder bench`` suite."""
