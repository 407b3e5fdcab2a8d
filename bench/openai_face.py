"""The OpenAI face's request latency, with and without its interactive lane.

Sequential ``POST /v1/chat/completions`` with model ``ponder/direct`` in front of the
scripted simulator, round-robin over five targets through one keep-alive client, so that
machine noise hits them alike:

  raw           the simulator itself: the floor
  serve-poll    ``ponder serve`` (SQLite, folder broker), ``PONDER_API_INTERACTIVE=false``:
                the job goes through the broker and the request polls for its result
  serve-lane    the same with the lane on (the default): the API process runs the job
  pg-poll       ``ponder serve`` on PostgreSQL + Redis (its Celery worker), lane off
  pg-lane       the same, lane on

    python bench/openai_face.py [--requests 200] [--json]

Known problem: both runs on 2026-12-05 stalled after all four servers had started (the
process idle, no line printed; the servers answered curl). Not diagnosed yet: do not
trust a run of this script until that is understood.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parent
for _path in (str(BENCH), str(BENCH.parent)):
    if _path not in sys.path:
        sys.path.append(_path)

import api_load  # noqa: E402
from _shared import temp_database  # noqa: E402
from peers.openai_wire import Target, _summary, interleaved  # noqa: E402


@contextmanager
def face(sim_url: str, name: str, workdir: Path, *, postgres: bool, lane: bool) -> Iterator[Target]:
    data = workdir / name
    data.mkdir()
    with ExitStack() as stack:
        env = {"PONDER_API_INTERACTIVE": "true" if lane else "false"}
        if postgres:
            import redis

            redis.Redis.from_url(api_load.REDIS_DB).flushdb()
            pg = stack.enter_context(temp_database())
            env |= {"PONDER_DATABASE_URL": pg, "PONDER_BROKER_URL": api_load.REDIS_DB}
        url = stack.enter_context(api_load.serve(sim_url, env, data))
        yield Target(name, name, url, "ponder/direct")


def run(sim_url: str, requests: int) -> dict[str, Any]:
    raw = Target("raw", "raw call to the simulator", sim_url, "sim")
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        targets = [raw]
        for name, postgres, lane in [
            ("serve-poll", False, False),
            ("serve-lane", False, True),
            ("pg-poll", True, False),
            ("pg-lane", True, True),
        ]:
            targets.append(
                stack.enter_context(face(sim_url, name, Path(tmp), postgres=postgres, lane=lane))
            )
        with httpx.Client(timeout=60) as http:
            samples, failed = interleaved(http, targets, requests)
    rows = [
        {"name": t.name, "failed": failed[t.name]}
        if t.name in failed
        else {"name": t.name, **_summary(samples[t.name], samples["raw"])}
        for t in targets
    ]
    return {"requests": requests, "rows": rows}


def main() -> None:
    from core.simulator.config import Rule, SimulatorConfig
    from core.simulator.server import Simulator

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    config = SimulatorConfig(models=["sim"], rules=[Rule(replies=["The answer is 5."])])
    with Simulator(config) as sim:
        result = run(sim.url, args.requests)
    if args.json:
        json.dump(result, sys.stdout)
        return
    print(f"{'target':<12} {'p50 ms':>8} {'p99 ms':>8} {'p50-raw':>8} {'p99-raw':>8}")
    for row in result["rows"]:
        if "failed" in row:
            print(f"{row['name']:<12} {row['failed']}")
            continue
        print(
            f"{row['name']:<12} {row['p50_ms']:>8} {row['p99_ms']:>8} "
            f"{row['p50_over_raw_ms']:>8} {row['p99_over_raw_ms']:>8}"
        )


if __name__ == "__main__":
    main()
