"""OpenTelemetry export: what it costs a job, with the collector up, down and hung.

In-process (``Runtime`` + the job runner, SQLite in a temporary folder, as ``ponder
solve``) on the zero-latency simulator, so that export is the only thing that differs.
A `self_consistency` job (adaptive, one sample per call: several model calls, a vote
event per batch) runs in blocks under four settings, the blocks interleaved round after
round, each round starting with the next setting, so that a slow patch of the
machine hits all of them:

  off        no export (the default)
  up         export to an OTLP/HTTP receiver that answers at once (a stub on 127.0.0.1)
  down       export to a port where nothing listens (connection refused)
  hung       export to a port that accepts and never answers (each export waits out
             the 2 s timeout)

Printed per setting: job wall time p50/p99, the difference to ``off``, the process's CPU
time per job over the block (every thread: the export thread's encoding and sending
included; less sensitive than wall time to other work on the machine), and what the
exporter reports (spans exported, failed, dropped from the full queue).

    python bench/otel_overhead.py [--rounds 8] [--jobs 50] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _shared import percentile  # noqa: E402
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: E402

from core import telemetry  # noqa: E402
from core.jobs import submit_job  # noqa: E402
from core.runtime import Runtime  # noqa: E402
from core.settings import PoolSettings, Settings  # noqa: E402
from core.simulator.config import Rule, SimulatorConfig  # noqa: E402
from core.simulator.server import Simulator  # noqa: E402

QUESTION = "What is 2 + 3?"
SPEC = {"kind": "self_consistency", "n": 6, "adaptive": True, "batch_size": 1}
SETTINGS = ("off", "up", "down", "hung")
BATCH: dict[str, Any] = {
    "schedule_delay_millis": 50,
    "max_export_batch_size": 64,
    "max_queue_size": 256,
}
"""Export every 50 ms in batches of 64, so that sending (or failing to) overlaps the jobs
rather than waiting for the default 5 s; a small queue, so that a dead collector fills
it within a block and the drops show."""


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@contextmanager
def endpoints() -> Iterator[dict[str, str]]:
    """URLs of an answering receiver, a closed port and a black hole."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(1024)  # the kernel completes handshakes; nobody ever reads or answers
    try:
        yield {
            "up": f"http://127.0.0.1:{server.server_address[1]}/v1/traces",
            "down": f"http://127.0.0.1:{closed.getsockname()[1]}/v1/traces",
            "hung": f"http://127.0.0.1:{hole.getsockname()[1]}/v1/traces",
        }
    finally:
        server.shutdown()
        server.server_close()
        closed.close()
        hole.close()


async def _block(rt: Runtime, jobs: int) -> list[float]:
    walls = []
    for _ in range(jobs):
        started = time.perf_counter()
        job_id = await submit_job(rt.sessions, rt.pools, question=QUESTION, strategy=SPEC)
        outcome = await rt.runner.run(job_id)
        walls.append((time.perf_counter() - started) * 1000)
        assert outcome.status == "succeeded", outcome
    return walls


async def measure(rounds: int, jobs: int) -> dict[str, Any]:
    walls: dict[str, list[float]] = {name: [] for name in SETTINGS}
    cpu_s = dict.fromkeys(SETTINGS, 0.0)
    counts: dict[str, dict[str, int]] = {
        name: {"exported": 0, "failed": 0, "dropped": 0} for name in SETTINGS
    }
    script = SimulatorConfig(models=["sim"], rules=[Rule(replies=["The answer is 5."])])
    with Simulator(script) as sim, tempfile.TemporaryDirectory() as tmp, endpoints() as urls:
        pool = PoolSettings(
            endpoints=[sim.url],
            model="sim",
            kind="simulator",
            price_input_per_1k=0.0,
            price_output_per_1k=0.0,
        )
        settings = Settings(
            database_url=f"sqlite:///{tmp}/bench.db",
            data_dir=Path(tmp),
            pools={"small": pool},
            _env_file=None,  # type: ignore[call-arg]
        )
        async with Runtime(settings, roles={"small"}) as rt:
            await _block(rt, 3)  # warm-up: connections, first imports
            for round_ in range(rounds):
                # Each round starts with a different setting: none always runs first.
                for name in SETTINGS[round_ % 4 :] + SETTINGS[: round_ % 4]:
                    export = None
                    if name != "off":
                        exporter = OTLPSpanExporter(endpoint=urls[name], timeout=2.0)
                        export = telemetry.setup("ponder-bench", exporter=exporter, **BATCH)
                    try:
                        cpu = time.process_time()
                        walls[name] += await _block(rt, jobs)
                        cpu_s[name] += time.process_time() - cpu
                    finally:
                        if export is not None:
                            # Counted before the shutdown's last flush: what the jobs
                            # left queued is the processor's business, not theirs.
                            await asyncio.to_thread(export.flush, 3.0)
                            for key in counts[name]:
                                counts[name][key] += export.stats()[key]
                            await asyncio.to_thread(telemetry.shutdown)
    base = statistics.median(walls["off"])
    out: dict[str, Any] = {"spec": SPEC, "rounds": rounds, "jobs_per_block": jobs}
    for name in SETTINGS:
        p50 = statistics.median(walls[name])
        out[name] = {
            "jobs": len(walls[name]),
            "p50_ms": round(p50, 2),
            "p99_ms": round(percentile(walls[name], 0.99), 2),
            "p50_minus_off_ms": round(p50 - base, 2),
            "cpu_ms_per_job": round(cpu_s[name] * 1000 / len(walls[name]), 2),
            **counts[name],
        }
    return out


def run(rounds: int = 8, jobs: int = 50) -> dict[str, Any]:
    return asyncio.run(measure(rounds, jobs))


def table(result: dict[str, Any]) -> list[str]:
    lines = [
        f"OTLP export overhead per job: {json.dumps(result['spec'])}, in-process, SQLite, "
        f"zero-latency simulator, {result['rounds']} rounds x {result['jobs_per_block']} jobs",
        f"  {'collector':<10} {'p50 ms':>8} {'p99 ms':>8} {'p50 - off':>10} {'CPU ms/job':>11} "
        f"{'exported':>9} {'failed':>7} {'dropped':>8}",
    ]
    for name in SETTINGS:
        row = result[name]
        delta = "" if name == "off" else f"{row['p50_minus_off_ms']:+.2f}"
        spans = ("", "", "") if name == "off" else (row["exported"], row["failed"], row["dropped"])
        lines.append(
            f"  {name:<10} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} {delta:>10} "
            f"{row['cpu_ms_per_job']:>11.2f} {spans[0]:>9} {spans[1]:>7} {spans[2]:>8}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.rounds, args.jobs)
    if args.json:
        json.dump(result, sys.stdout)
        return
    for line in table(result):
        print(line)


if __name__ == "__main__":
    main()
