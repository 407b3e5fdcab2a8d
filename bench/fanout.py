"""Fan-out: `self_consistency` with n samples vs one sample (`direct`), side by side.

Both run in-process (``Runtime`` + the job runner, SQLite in a temporary folder, the
same path as ``ponder solve``) against the simulator with a latency model, interleaved:

  one sample   a `direct` job: one call, one choice
  fan-out      a `self_consistency` job with n samples (one request with ``n``)

The simulator's latency model stands in for vLLM's batching (docs/simulator.md): a fixed
time to first token, then one decode step per token, with the n choices of a request
decoding together (``batch_n``) and each step slowed by ``concurrency_slowdown`` per other
running request. It is a model of a batching engine, not one: the ratio says what
Ponder's orchestration adds on top of whatever the engine does, not what vLLM would do.
Also measured: the same fan-out with ``batch_n`` off (choices decoded one after another,
as a server without parallel slots would).

    python bench/fanout.py [--n 16] [--reps 5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from core.jobs import submit_job
from core.runtime import Runtime
from core.settings import PoolSettings, Settings
from core.simulator.config import Latency, Rule, SimulatorConfig
from core.simulator.server import Simulator

QUESTION = "What is 2 + 3?"
REPLY = "Two plus three: start at two, count three more, three four five. The answer is 5."
LATENCY = {"ttft_ms": 20.0, "per_token_ms": 4.0, "concurrency_slowdown": 0.05}


def config(batch_n: bool) -> SimulatorConfig:
    return SimulatorConfig(
        models=["sim"],
        rules=[Rule(replies=[REPLY])],
        latency=Latency(**LATENCY, batch_n=batch_n),
    )


async def _job(rt: Runtime, sim: Simulator, strategy: dict[str, Any]) -> dict[str, float]:
    sim.reset()
    started = time.perf_counter()
    job_id = await submit_job(rt.sessions, rt.pools, question=QUESTION, strategy=strategy)
    outcome = await rt.runner.run(job_id)
    wall = (time.perf_counter() - started) * 1000
    assert outcome.status == "succeeded", outcome
    stats = sim.stats
    return {
        "wall_ms": wall,
        "requests": stats.requests,
        "choices": stats.choices_generated,
        "tokens": stats.completion_tokens,
    }


async def measure(n: int, reps: int, batch_n: bool = True) -> dict[str, Any]:
    with Simulator(config(batch_n)) as sim, tempfile.TemporaryDirectory() as tmp:
        pool = PoolSettings(endpoints=[sim.url], model="sim", kind="simulator")
        settings = Settings(
            database_url=f"sqlite:///{tmp}/bench.db",
            data_dir=Path(tmp),
            pools={"small": pool},
            _env_file=None,  # type: ignore[call-arg]
        )
        one_spec = {"kind": "direct"}
        fan_spec = {"kind": "self_consistency", "n": n}
        async with Runtime(settings, roles={"small"}) as rt:
            await _job(rt, sim, one_spec)  # warm-up: connections, first imports
            await _job(rt, sim, fan_spec)
            one: list[dict[str, float]] = []
            fan: list[dict[str, float]] = []
            for _ in range(reps):
                one.append(await _job(rt, sim, one_spec))
                fan.append(await _job(rt, sim, fan_spec))
    one_ms = statistics.median(r["wall_ms"] for r in one)
    fan_ms = statistics.median(r["wall_ms"] for r in fan)
    return {
        "n": n,
        "reps": reps,
        "batch_n": batch_n,
        "latency": LATENCY,
        "one_sample_ms": round(one_ms, 1),
        "fan_out_ms": round(fan_ms, 1),
        "ratio": round(fan_ms / one_ms, 2),
        "fan_out_requests": fan[-1]["requests"],
        "fan_out_choices": fan[-1]["choices"],
        "fan_out_tokens": fan[-1]["tokens"],
    }


def run(n: int = 16, reps: int = 5) -> dict[str, Any]:
    """Batched (vLLM-like) and sequential decoding, each with its own one-sample floor."""
    return {
        "batched": asyncio.run(measure(n, reps, batch_n=True)),
        "sequential": asyncio.run(measure(n, reps, batch_n=False)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = run(args.n, args.reps)
    if args.json:
        json.dump(results, sys.stdout)
        return
    print(f"self_consistency n={args.n} vs direct, in-process, simulator latency {LATENCY}")
    for name, row in results.items():
        print(
            f"  {name:<10} one {row['one_sample_ms']:>7.1f} ms  fan-out {row['fan_out_ms']:>7.1f}"
            f" ms  ratio {row['ratio']:.2f}  ({row['fan_out_requests']} request(s), "
            f"{row['fan_out_choices']} choices)"
        )


if __name__ == "__main__":
    main()
