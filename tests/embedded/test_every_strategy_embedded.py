"""Every registered strategy runs on the real embedded models through ``ponder solve``.

A smoke run each, kept short: one model host serves both embedded models for the whole
module (so no run pays for loading them), every ``ponder solve`` points its ``small``
and ``large`` pools at it, and each strategy gets small parameters and a job budget.
What is asserted is what a user relies on: the job succeeds, it made real model calls
that its usage counts, the budget held, and the trace holds the strategy's decisions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.embedded.manager import EmbeddedModels
from core.settings import EmbeddedSettings
from strategies.registry import STRATEGIES
from tests.embedded.test_embedded_models import models_dir, require_xllamacpp

ROOT = Path(__file__).resolve().parents[2]
QUESTION = "Tom has 3 boxes with 4 apples each. How many apples does he have?"
BUDGET_TOKENS = 600

# Short runs: few samples, short generations. A kind missing here fails the test below,
# so a new strategy cannot go without its smoke run.
SMOKE_PARAMS: dict[str, dict[str, Any]] = {
    "direct": {"max_tokens": 96},
    "self_consistency": {"n": 3, "max_tokens": 96},
    "rpc": {"n": 3, "max_tokens": 96},
    "first_finish": {"n": 3, "max_tokens": 96},
    "best_of_n": {"n": 2, "max_tokens": 96},
    "genrm": {"solutions": 2, "verifications": 1, "max_tokens": 96, "verify_tokens": 48},
    "solve_detect_verify": {"max_tokens": 96, "max_checks": 2},
    "refine": {"max_rounds": 1, "max_tokens": 96, "critique_tokens": 48},
    "particle_filter": {"particles": 2, "max_steps": 2, "step_tokens": 48},
    "beam_search": {"beam_width": 2, "expansions": 2, "max_steps": 2, "step_tokens": 48},
    "elastic": {"thinking_tokens": 96, "answer_tokens": 32},
    "budget_forcing": {
        "min_thinking_tokens": 16,
        "max_thinking_tokens": 96,
        "max_extensions": 1,
        "answer_tokens": 32,
    },
    "plan_and_budget": {
        "total_tokens": 320,
        "plan_tokens": 96,
        "synthesis_tokens": 48,
        "max_steps": 2,
    },
    "spec_reason": {"max_steps": 3, "step_tokens": 48},
    "glimp_router": {"max_steps": 3, "step_tokens": 48},
    "cascade": {"samples": 2, "max_tokens": 96},
    "difficulty_router": {"probe_tokens": 32, "probe_samples": 2},
    "program_of_thought": {"max_tokens": 160},
    "tool_agent": {"max_steps": 3, "max_tokens": 160},
    "divide_then_aggregate": {"max_rounds": 1, "plan_tokens": 256, "answer_tokens": 64},
}

pytestmark = [pytest.mark.embedded, pytest.mark.slow]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    require_xllamacpp()
    settings = EmbeddedSettings(roles=["small", "large"], threads=2, slots=4, context=8192)
    with EmbeddedModels(settings, models_dir()) as models:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PONDER_")}
        env["PONDER_DATA_DIR"] = str(tmp_path_factory.mktemp("every-strategy"))
        for role, pool in models.pools.items():
            prefix = f"PONDER_POOLS__{role.upper()}__"
            env[prefix + "ENDPOINTS"] = json.dumps(pool.endpoints)
            env[prefix + "KIND"] = pool.kind
            env[prefix + "MODEL"] = pool.model
            env[prefix + "MAX_N"] = str(pool.max_n)
            env[prefix + "MAX_CONCURRENCY"] = str(pool.max_concurrency)
        yield env


def ponder(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_every_registered_strategy_has_a_smoke_run() -> None:
    # compute_optimal needs an eval table; it has its own test on the simulator.
    assert sorted(SMOKE_PARAMS) == sorted(k for k in STRATEGIES if k != "compute_optimal")


@pytest.mark.parametrize("kind", sorted(SMOKE_PARAMS))
def test_strategy_solves_on_the_embedded_models(env: dict[str, str], kind: str) -> None:
    params = [f"{key}={json.dumps(value)}" for key, value in SMOKE_PARAMS[kind].items()]
    solved = ponder(
        env,
        "solve",
        QUESTION,
        "--strategy",
        kind,
        *[arg for p in params for arg in ("-p", p)],
        "--budget-tokens",
        str(BUDGET_TOKENS),
        "--seed",
        "3",
        "--json",
    )
    assert solved.returncode == 0, solved.stderr[-3000:]
    result = json.loads(solved.stdout)
    assert result["status"] == "succeeded", result
    usage = result["usage"]
    assert usage["calls"] >= 1
    generated = sum(role["completion_tokens"] for role in usage["by_role"].values())
    assert 0 < generated <= BUDGET_TOKENS
    assert isinstance(result["answer"], str) or result["answer"] is None

    trace = ponder(env, "trace", str(result["job_id"]), "--json")
    assert trace.returncode == 0, trace.stderr[-2000:]
    spans = json.dumps(json.loads(trace.stdout))
    assert "model_call" in spans
