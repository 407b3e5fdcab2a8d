"""Ponder next to peers (OptiLLM, its_hub, LiteLLM) doing the same work against one simulator.

One zero-latency simulator (in this process, in a thread) serves everybody, one after
another; its request counter says how many model calls each made. Ponder runs in-process
(``Runtime`` + the job runner on SQLite, as ``ponder solve``); each peer runs as a
subprocess of the peers' own venv (``.bench-peers``, never a dependency of Ponder):

    python3 -m venv .bench-peers
    .bench-peers/bin/pip install 'its-hub[lm]'
    .bench-peers/bin/pip install --no-deps optillm   # its full deps pull torch and CUDA
    .bench-peers/bin/pip install flask openai numpy requests aiohttp cerebras_cloud_sdk \\
        networkx 'z3-solver<=4.15.4.0' sympy pyyaml math-verify
    .bench-peers/bin/pip install 'litellm[proxy]'

Overhead per call = (wall − calls × raw p50) / calls, where raw p50 is a plain httpx
call to the same simulator: what each tool adds around the upstream requests it makes.
Then the OpenAI wire (``openai_wire.py``): LiteLLM's proxy beside Ponder's journaled call
and beside its OpenAI face (``ponder/direct`` on ``ponder serve``, SQLite and PostgreSQL).

    python bench/peers/compare.py [--n 8] [--reps 10] [--requests 200] [--calls 2000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.peers import openai_wire
from core.jobs import submit_job
from core.runtime import Runtime
from core.settings import PoolSettings, Settings
from core.simulator.config import Rule, SimulatorConfig
from core.simulator.server import Simulator

HERE = Path(__file__).resolve().parent
PEERS_VENV = HERE.parents[1] / ".bench-peers"
PEERS = {"optillm": "optillm_peer.py", "its_hub": "its_hub_peer.py"}
QUESTION = "What is 2 + 3?"
REPLIES = ["The answer is 5.", "The answer is 5.", "The answer is 6."]


async def _raw_p50(url: str, calls: int = 50) -> float:
    body = {"model": "sim", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 64}
    samples = []
    async with httpx.AsyncClient() as http:
        for i in range(calls + 5):
            started = time.perf_counter()
            response = await http.post(f"{url}/v1/chat/completions", json=body)
            response.raise_for_status()
            response.json()
            if i >= 5:
                samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


async def _ponder(sim: Simulator, n: int, reps: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        pool = PoolSettings(endpoints=[sim.url], model="sim", kind="simulator")
        settings = Settings(
            database_url=f"sqlite:///{tmp}/bench.db",
            data_dir=Path(tmp),
            pools={"small": pool},
            _env_file=None,  # type: ignore[call-arg]
        )
        rows = []
        async with Runtime(settings, roles={"small"}) as rt:

            async def once(spec: dict[str, Any]) -> float:
                started = time.perf_counter()
                job_id = await submit_job(rt.sessions, rt.pools, question=QUESTION, strategy=spec)
                outcome = await rt.runner.run(job_id)
                assert outcome.status == "succeeded", outcome
                return (time.perf_counter() - started) * 1000

            scenarios: list[tuple[str, int, dict[str, Any]]] = [
                ("plain call", 1, {"kind": "direct"}),
                ("self-consistency", n, {"kind": "self_consistency", "n": n}),
            ]
            for name, size, spec in scenarios:
                await once(spec)
                sim.reset()
                walls = [await once(spec) for _ in range(reps)]
                stats = sim.stats
                rows.append(
                    {
                        "scenario": name,
                        "n": size,
                        "wall_ms": round(statistics.median(walls), 2),
                        "calls": stats.requests / reps,
                        "choices": stats.choices_generated / reps,
                        "tokens": stats.completion_tokens / reps,
                    }
                )
    return rows


def _peer(name: str, sim_url: str, n: int, reps: int) -> dict[str, Any]:
    python = PEERS_VENV / "bin" / "python"
    if not python.exists():
        return {"peer": name, "skipped": f"no peers venv at {PEERS_VENV} (see bench/README.md)"}
    command = [str(python), str(HERE / PEERS[name]), "--sim", sim_url]
    command += ["--n", str(n), "--reps", str(reps)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=HERE)
    except subprocess.TimeoutExpired:
        return {"peer": name, "skipped": "timed out after 300 s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        return {"peer": name, "skipped": why[:200]}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def run(
    n: int = 8, reps: int = 10, peers: bool = True, requests: int = 200, calls: int = 2000
) -> dict[str, Any]:
    """Ponder's rows, then each peer's (or why it was skipped), with overhead per call;
    with ``peers``, the OpenAI wire rows too (``requests`` per target, ``calls`` for
    Ponder's journaled call)."""
    config = SimulatorConfig(models=["sim"], rules=[Rule(replies=REPLIES)])
    with Simulator(config) as sim:
        raw = asyncio.run(_raw_p50(sim.url))
        ponder = asyncio.run(_ponder(sim, n, reps))
        results: list[dict[str, Any]] = [
            {"peer": "ponder", "version": "in-process", "rows": ponder}
        ]
        wire = None
        if peers:
            results += [_peer(name, sim.url, n, reps) for name in PEERS]
            wire = openai_wire.run(sim.url, requests, calls)
    for result in results:
        for row in result.get("rows", []):
            made = max(row["calls"], 1.0)
            row["overhead_per_call_ms"] = round((row["wall_ms"] - made * raw) / made, 2)
    report = {"raw_call_p50_ms": round(raw, 3), "n": n, "reps": reps, "tools": results}
    return report | ({"openai_wire": wire} if wire else {})


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = run(args.n, args.reps, requests=args.requests, calls=args.calls)
    if args.json:
        json.dump(results, sys.stdout)
        return
    print(f"zero-latency simulator; raw httpx call p50 {results['raw_call_p50_ms']} ms")
    for line in table_lines(results):
        print(line)


def table_lines(results: dict[str, Any]) -> list[str]:
    lines = [
        f"{'tool':<9}{'scenario':<28}{'n':>3}{'wall ms':>9}{'calls':>7}{'tokens':>8}"
        f"{'ovh/call':>10}"
    ]
    for tool in results["tools"]:
        if "skipped" in tool:
            lines.append(f"{tool['peer']:<9}peer skipped: {tool['skipped']}")
            continue
        for row in tool["rows"]:
            lines.append(
                f"{tool['peer']:<9}{row['scenario']:<28}{row['n']:>3}{row['wall_ms']:>9.2f}"
                f"{row['calls']:>7g}{row['tokens']:>8g}{row['overhead_per_call_ms']:>10.2f}"
            )
    if "openai_wire" in results:
        lines += ["", *openai_wire.table_lines(results["openai_wire"])]
    return lines


if __name__ == "__main__":
    main()
