"""Helpers every benchmark uses. Imported as ``_shared``: a script's own folder is first
on ``sys.path`` when it runs as ``python bench/NAME.py``."""

from __future__ import annotations

import socket

ADMIN_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"
FINAL = ("succeeded", "failed", "cancelled")


def percentile(values: list[float], q: float) -> float:
    """The q-quantile by rank (no interpolation): what p99 of N samples usually means."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
