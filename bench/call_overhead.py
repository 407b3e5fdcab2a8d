"""Per-call overhead of Ponder's model path, measured side by side in one run.

Three ways to make the same chat call to the same zero-latency simulator, interleaved
round-robin so that machine noise hits all three alike:

  raw      httpx.AsyncClient.post, JSON decode — the floor
  pool     PoolClient.generate — balancing, retries bookkeeping, parsing
  journal  ctx.models[role].generate — pool + budget + journal key + span; the journal
           row and span are queued, and the next journaled call commits them in the
           writer's thread while it runs (core.trace): what a strategy waits for, with
           the commits' CPU still on this process

Each call carries a new seed, so every journaled call is a miss that writes a row.

    python bench/call_overhead.py [--calls 2000] [--database sqlite|postgres] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from _shared import percentile, temp_database

from core.budget import BudgetSpec, JobBudget
from core.db import repo
from core.journal import Journal
from core.role_model import RoleModel
from core.runtime import Runtime
from core.settings import PoolSettings, Settings
from core.simulator.config import Rule, SimulatorConfig
from core.simulator.server import Simulator
from core.trace import Tracer, TraceWriter
from strategies.protocol import ModelRequest

MESSAGES = [{"role": "user", "content": "What is 2 + 3?"}]


async def measure(calls: int, database_url: str) -> dict[str, dict[str, float]]:
    config = SimulatorConfig(models=["sim"], rules=[Rule(replies=["The answer is 5."])])
    with Simulator(config) as sim, tempfile.TemporaryDirectory() as tmp:
        pool = PoolSettings(endpoints=[sim.url], model="sim", kind="simulator")
        settings = Settings(
            database_url=database_url,
            data_dir=Path(tmp),
            pools={"small": pool},
            _env_file=None,  # type: ignore[call-arg]
        )
        async with Runtime(settings, roles={"small"}) as rt:
            assert rt.http is not None
            http = rt.http
            client = rt.pools["small"]
            async with rt.sessions() as session, session.begin():
                job = await repo.create_job(
                    session, question="bench", strategy={"kind": "direct"}, budget={}
                )
                job_id = job.id
            assert rt.sync_engine is not None
            writer = TraceWriter(rt.sync_engine)
            writer.start()
            tracer = Tracer(job_id, writer)
            model = RoleModel(
                "small",
                client,
                "sim",
                journal=Journal(job_id, []),
                budget=JobBudget(BudgetSpec()),
                tracer=tracer,
            )
            seed = 0

            def request() -> ModelRequest:
                nonlocal seed
                seed += 1
                return ModelRequest(messages=MESSAGES, max_tokens=16, seed=seed)

            async def raw() -> None:
                r = request()
                body = {"model": "sim", "messages": r.messages, "max_tokens": 16, "seed": r.seed}
                response = await http.post(f"{sim.url}/v1/chat/completions", json=body)
                response.raise_for_status()
                response.json()

            async def pooled() -> None:
                await client.generate(request())

            async def journaled() -> None:
                await model.generate(request())

            ways: dict[str, Callable[[], Awaitable[None]]] = {
                "raw": raw,
                "pool": pooled,
                "journal": journaled,
            }
            samples: dict[str, list[float]] = {name: [] for name in ways}
            for _ in range(50):  # warm connections, caches, the JIT-less interpreter
                for fn in ways.values():
                    await fn()
            for _ in range(calls):
                for name, fn in ways.items():
                    start = time.perf_counter()
                    await fn()
                    samples[name].append((time.perf_counter() - start) * 1000)
            await writer.close()
    base50 = statistics.median(samples["raw"])
    base99 = percentile(samples["raw"], 0.99)
    table = {}
    for name, values in samples.items():
        p50, p99 = statistics.median(values), percentile(values, 0.99)
        table[name] = {
            "p50_ms": round(p50, 3),
            "p99_ms": round(p99, 3),
            "p50_over_raw_ms": round(p50 - base50, 3),
            "p99_over_raw_ms": round(p99 - base99, 3),
            "p50_ratio": round(p50 / base50, 2),
        }
    return table


def run(calls: int = 2000, database: str = "sqlite") -> dict[str, dict[str, float]]:
    """``measure`` on a fresh SQLite file or a fresh PostgreSQL database."""
    if database == "postgres":
        with temp_database() as url:
            return asyncio.run(measure(calls, url))
    with tempfile.TemporaryDirectory() as tmp:
        return asyncio.run(measure(calls, f"sqlite:///{tmp}/bench.db"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    table = run(args.calls, args.database)
    if args.json:
        json.dump({"database": args.database, "calls": args.calls, "results": table}, sys.stdout)
        return
    print(f"per-call overhead, {args.calls} calls each, interleaved; database: {args.database}")
    print(f"{'path':<9}{'p50 ms':>9}{'p99 ms':>9}{'p50 +raw':>10}{'p99 +raw':>10}{'ratio':>7}")
    for name, row in table.items():
        print(
            f"{name:<9}{row['p50_ms']:>9.3f}{row['p99_ms']:>9.3f}{row['p50_over_raw_ms']:>10.3f}"
            f"{row['p99_over_raw_ms']:>10.3f}{row['p50_ratio']:>7.2f}"
        )


if __name__ == "__main__":
    main()
