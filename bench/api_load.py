"""The API under load: 1,000 submissions from 32 and from 128 concurrent clients.

    python bench/api_load.py [--jobs 1000] [--clients 32 --clients 128] [--only sqlite]

Each database runs the service as a user runs it, ``ponder serve`` in a child process
(API + one worker with the reaper), in front of a zero-latency simulator:

    sqlite     the embedded default: SQLite file, folder broker
    postgres   PostgreSQL + Redis (a fresh database; Redis db 15, flushed first)

Every client sends ``POST /v1/jobs`` (a `direct` job) back to back over its own
keep-alive connection. Printed per level: the answers by status, connection errors,
p50 and p99 of the submission, and jobs lost: accepted (202) but not finished 120 s
after the last submission. Over capacity the API must answer fast (429/503 with
Retry-After), never hang or reset; this script counts such answers as errors too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _shared import FINAL, free_port, percentile, temp_database

BODY = {"question": "What is 2 + 3?", "strategy": "direct"}
REDIS_DB = "redis://127.0.0.1:6379/15"


@contextmanager
def simulator() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "simulate", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(f"{url}/v1/models", proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with code {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


@contextmanager
def serve(sim_url: str, env_extra: dict[str, str], data_dir: Path) -> Iterator[str]:
    """``ponder serve`` on a free port, its pools pointed at the simulator."""
    port = free_port()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("PONDER_")
    } | env_extra | {
        "PONDER_DATA_DIR": str(data_dir),
        "PONDER_POOLS__SMALL__ENDPOINTS": json.dumps([sim_url]),
        "PONDER_POOLS__SMALL__MODEL": "sim",
        "PONDER_POOLS__SMALL__KIND": "simulator",
        "PONDER_DEFAULT_STRATEGY": "direct",
    }  # fmt: skip
    log = (data_dir / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(f"{url}/healthz", proc)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


async def _client(http: httpx.AsyncClient, todo: list[int], out: dict[str, Any]) -> None:
    while todo:
        todo.pop()
        started = time.perf_counter()
        try:
            response = await http.post("/v1/jobs", json=BODY)
        except httpx.HTTPError as exc:
            out["statuses"][type(exc).__name__] += 1
            continue
        finally:
            out["latencies"].append((time.perf_counter() - started) * 1000)
        out["statuses"][str(response.status_code)] += 1
        if response.status_code == 202:
            out["accepted"].append(response.json()["id"])
        elif response.status_code in (429, 503):
            out["retry_after"].append(response.headers.get("retry-after"))


async def _load(url: str, jobs: int, clients: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "statuses": Counter(), "latencies": [], "accepted": [], "retry_after": []
    }  # fmt: skip
    todo = list(range(jobs))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        await asyncio.gather(*(_client(http, todo, out) for _ in range(clients)))
    out["submit_s"] = time.perf_counter() - started
    return out


async def _unfinished(url: str, ids: list[str], timeout: float) -> int:
    pending = set(ids)
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        while pending and time.monotonic() < deadline:
            for job_id in list(pending)[:200]:
                job = (await http.get(f"/v1/jobs/{job_id}")).json()
                if job.get("status") in FINAL:
                    pending.discard(job_id)
            if pending:
                await asyncio.sleep(0.5)
    return len(pending)


def measure(url: str, jobs: int, clients: int) -> dict[str, Any]:
    out = asyncio.run(_load(url, jobs, clients))
    lost = asyncio.run(_unfinished(url, out["accepted"], timeout=120))
    lat = out["latencies"]
    errors = sum(n for status, n in out["statuses"].items() if status != "202")
    return {
        "clients": clients,
        "jobs": jobs,
        "statuses": dict(out["statuses"]),
        "errors": errors,
        "p50_ms": round(percentile(lat, 0.5), 1),
        "p99_ms": round(percentile(lat, 0.99), 1),
        "submit_s": round(out["submit_s"], 2),
        "accepted_per_s": round(len(out["accepted"]) / out["submit_s"], 1),
        "lost": lost,
    }


def run(
    jobs: int = 1000, levels: tuple[int, ...] = (32, 128), only: str | None = None
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    with simulator() as sim, tempfile.TemporaryDirectory() as tmp:
        if only in (None, "sqlite"):
            data = Path(tmp) / "sqlite"
            data.mkdir()
            with serve(sim, {}, data) as url:
                rows += [{"database": "sqlite", **measure(url, jobs, c)} for c in levels]
        if only in (None, "postgres"):
            import redis

            redis.Redis.from_url(REDIS_DB).flushdb()
            data = Path(tmp) / "postgres"
            data.mkdir()
            with temp_database() as pg:
                env = {"PONDER_DATABASE_URL": pg, "PONDER_BROKER_URL": REDIS_DB}
                with serve(sim, env, data) as url:
                    rows += [{"database": "postgres", **measure(url, jobs, c)} for c in levels]
    return {"rows": rows}


def table_lines(result: dict[str, Any]) -> list[str]:
    lines = [f"{'database':<10}{'clients':>8}{'jobs':>6}{'errors':>8}{'p50 ms':>9}{'p99 ms':>9}"
             f"{'jobs/s':>8}{'lost':>6}  answers"]  # fmt: skip
    for r in result["rows"]:
        lines.append(
            f"{r['database']:<10}{r['clients']:>8}{r['jobs']:>6}{r['errors']:>8}"
            f"{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['accepted_per_s']:>8.1f}{r['lost']:>6}"
            f"  {r['statuses']}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--clients", type=int, action="append", default=None)
    parser.add_argument("--only", choices=["sqlite", "postgres"], default=None)
    args = parser.parse_args()
    result = run(args.jobs, tuple(args.clients or (32, 128)), args.only)
    print("\n".join(table_lines(result)))


if __name__ == "__main__":
    main()
