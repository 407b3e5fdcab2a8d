"""What both peer scripts share. Runs under the peers' venv: standard library only."""

from __future__ import annotations

import json
import statistics
import time
import urllib.request
from collections.abc import Callable
from typing import Any

QUESTION = "What is 2 + 3?"


def _post(url: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body or {}).encode()
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read() or b"null")


def stats(sim: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{sim}/sim/stats", timeout=10) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def scenario(sim: str, name: str, n: int, reps: int, fn: Callable[[], object]) -> dict[str, Any]:
    """Time ``fn`` ``reps`` times (after one warm-up) and read the simulator's counters."""
    fn()
    _post(f"{sim}/sim/reset")
    walls = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        walls.append((time.perf_counter() - started) * 1000)
    counters = stats(sim)
    return {
        "scenario": name,
        "n": n,
        "wall_ms": round(statistics.median(walls), 2),
        "calls": counters["requests"] / reps,
        "choices": counters["choices_generated"] / reps,
        "tokens": counters["completion_tokens"] / reps,
    }
