"""Eval tests: a small arithmetic dataset whose every reply is scripted, so each
strategy's accuracy, tokens and cost can be worked out by hand.

Strategies (``ARMS``), told apart by model and system prompt:
- ``direct``: sim-small, one reply per problem (rule ``pick="first"``);
- adaptive self-consistency (system prompt "Vote."): one sample per call, n=3,
  successive replies of the problem's rule in order;
- ``direct`` on ``large``: sim-large, one reply per problem.

| problem | expected | direct (small) | vote replies | direct (large) |
|---|---|---|---|---|
| p1 2+3  | 5 | 5 ✓             | 5, 6, 5 -> 5 ✓ (3 calls)         | 5 ✓ |
| p2 10-4 | 6 | 7 ✗             | 6, 7, 6 -> 6 ✓ (3 calls)         | 6 ✓ |
| p3 3*3  | 9 | 8 ✗             | 8, 8 -> 8 ✗ (2 calls: unbeatable) | 9 ✓ |
| p4 12/4 | 3 | "$3.00" -> 3 ✓  | 3, 3 -> 3 ✓ (2 calls: unbeatable) | 2 ✗ |

Accuracy 2/4, 3/4, 3/4. "The answer is N." is 5 tokens; "The answer is $3.00" is 7.
Prices: small 1.0 per 1k generated tokens, large 10.0, prompts free.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from core.runtime import Runtime
from core.settings import Settings
from core.simulator.config import Failure, Latency, Rule, SimulatorConfig
from core.simulator.server import Simulator
from tests.fixtures.runtime import simulator_settings

PROBLEMS = [
    {"id": "p1", "question": "What is 2 + 3?", "answer": "5"},
    {"id": "p2", "question": "What is 10 - 4?", "answer": "6"},
    {"id": "p3", "question": "What is 3 * 3?", "answer": "9"},
    {"id": "p4", "question": "What is 12 / 4?", "answer": "3"},
]
DIRECT = "direct"
VOTE = json.dumps(
    {
        "kind": "self_consistency",
        "n": 3,
        "adaptive": True,
        "batch_size": 1,
        "confidence": 0.99,
        "system": "Vote.",
    }
)
LARGE = '{"kind": "direct", "role": "large"}'
ARMS = [DIRECT, VOTE, LARGE]
DIRECT_LABEL = "direct"
VOTE_LABEL = 'self_consistency n=3 adaptive=true batch_size=1 confidence=0.99 system="Vote."'
LARGE_LABEL = 'direct role="large"'

_SMALL = {"p1": "5", "p2": "7", "p3": "8", "p4": "$3.00"}
_VOTES = {"p1": ["5", "6", "5"], "p2": ["6", "7", "6"], "p3": ["8", "8", "9"], "p4": ["3"] * 3}
_LARGE = {"p1": "5", "p2": "6", "p3": "9", "p4": "2"}


def answer(value: str) -> str:
    return f"The answer is {value}." if not value.startswith("$") else f"The answer is {value}"


def script(
    latency: Latency | None = None, failures: list[Failure] | None = None
) -> SimulatorConfig:
    rules = []
    for p in PROBLEMS:
        q = re.escape(p["question"])
        pid = p["id"]
        rules.append(Rule(match=rf"system: Vote\..*{q}", replies=[answer(v) for v in _VOTES[pid]]))
        rules.append(Rule(match=q, model="sim-small", replies=[answer(_SMALL[pid])], pick="first"))
        rules.append(Rule(match=q, model="sim-large", replies=[answer(_LARGE[pid])], pick="first"))
    return SimulatorConfig(
        models=["sim-small", "sim-large"],
        rules=rules,
        latency=latency or Latency(),
        failures=failures or [],
    )


def priced_settings(sim_url: str, database_url: str, data_dir: Path) -> Settings:
    settings = simulator_settings(sim_url, database_url, data_dir)
    for role, price in (("small", 1.0), ("large", 10.0)):
        settings.pools[role] = settings.pools[role].model_copy(
            update={"price_output_per_1k": price}
        )
    return settings


def write_lines(path: Path, lines: list[Any]) -> Path:
    """Objects become JSON lines; strings are written as they are (bad lines)."""
    path.write_text(
        "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines),
        encoding="utf-8",
    )
    return path


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_lines(tmp_path / "arith.jsonl", PROBLEMS)


@pytest.fixture
def sim(simulator: Simulator) -> Simulator:
    simulator.set_config(script())
    return simulator


@pytest.fixture
async def rt(sim: Simulator, sqlite_database_url: str, tmp_path: Path) -> AsyncIterator[Runtime]:
    """A runtime whose pools ``small``/``large`` are the scripted ``sim-small``/``sim-large``."""
    settings = priced_settings(sim.url, sqlite_database_url, tmp_path)
    async with Runtime(settings, roles={"small", "large"}) as runtime:
        yield runtime
