"""SSE delay: from a trace event's commit to its arrival at a `GET /v1/jobs/{id}/events` client.

A real uvicorn server (in a thread) on a fresh PostgreSQL database holds one running job
(created with ``POST /v1/jobs``; a no-op executor leaves it to us). This process writes
decision events into the job's trace with the worker's own ``Tracer`` and ``TraceWriter``,
one every ``--spacing-ms``, noting the instant each commit returns, while an SSE client
on the same clock notes when each event's message (by its ``id``) arrives. On PostgreSQL
the stream is pushed (``core.live``: the writing transaction runs ``pg_notify``, the API's
one ``LISTEN`` connection wakes the stream, which reads the new rows), so the delay is
the notification's trip plus one read; ``pushed`` in the output says whether the
listener was connected. Without it the stream would poll (``PONDER_API_SSE_POLL_MIN_S``
= 0.05 s while events flow, backing off to ``_MAX_S`` = 0.5 s). Two spacings: events in
a burst (20 ms apart) and events as far apart as model calls (200 ms). The first event,
after 0.5 s of quiet, is reported on its own.

    python bench/sse_delay.py [--events 100] [--spacing-ms 20 --spacing-ms 200]
        [--database postgres|sqlite] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _shared import percentile, temp_database
from api_latency import NoopExecutor

from app.api.main import create_app
from app.api.settings import ApiSettings
from core.db import repo
from core.runtime import Runtime
from core.settings import PoolSettings, Settings
from core.trace import Tracer, TraceWriter
from tests.fixtures.api import ApiServer


async def _read(client: httpx.AsyncClient, job_id: str, arrivals: dict[int, float]) -> None:
    event = ""
    async with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("id: ") and event == "decision":
                arrivals.setdefault(int(line[4:]), time.perf_counter())


async def measure(database_url: str, events: int, spacing_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        pool = PoolSettings(endpoints=["http://127.0.0.1:9"], model="m", kind="simulator")
        settings = Settings(
            database_url=database_url, data_dir=Path(tmp), pools={"small": pool},
            _env_file=None,  # type: ignore[call-arg]
        )  # fmt: skip
        api_settings = ApiSettings(_env_file=None)  # type: ignore[call-arg]
        app = create_app(settings, executor=NoopExecutor(), api_settings=api_settings)
        committed: dict[int, float] = {}
        arrivals: dict[int, float] = {}
        pushed = False
        with ApiServer(app) as server:
            async with (
                httpx.AsyncClient(base_url=server.url, timeout=60) as client,
                Runtime(settings) as rt,
            ):
                body = {"question": "What is 2 + 3?", "strategy": "direct"}
                created = await client.post("/v1/jobs", json=body)
                assert created.status_code == 202, created.text
                job_id = created.json()["id"]
                async with rt.sessions() as session, session.begin():
                    job = await repo.get_job(session, job_id)
                    assert job is not None
                    await repo.mark_running(session, job)
                reader = asyncio.create_task(_read(client, job_id, arrivals))
                assert rt.sync_engine is not None
                writer = TraceWriter(rt.sync_engine)
                writer.start()
                tracer = Tracer(job_id, writer)
                await asyncio.sleep(0.5)  # the stream is open (and the listener connected)
                pushed = app.state.ponder.live is not None and app.state.ponder.live.pushing
                for i in range(events):
                    tracer.event("tick", {"i": i})
                    await writer.flush()
                    committed[tracer.spans_opened] = time.perf_counter()
                    await asyncio.sleep(spacing_s)
                await writer.close()
                async with rt.sessions() as session, session.begin():
                    job = await repo.get_job(session, job_id)
                    assert job is not None
                    await repo.finish_job(session, job, status="succeeded", result={}, usage={})
                await asyncio.wait_for(reader, timeout=30)
    delays = [(arrivals[seq] - t) * 1000 for seq, t in sorted(committed.items())]
    steady = delays[1:]
    return {
        "events": events,
        "spacing_ms": spacing_s * 1000,
        "received": len(arrivals),
        "pushed": pushed,
        "poll_min_s": api_settings.sse_poll_min_s,
        "poll_max_s": api_settings.sse_poll_max_s,
        "first_ms": round(delays[0], 1),
        "p50_ms": round(statistics.median(steady), 1),
        "p99_ms": round(percentile(steady, 0.99), 1),
        "max_ms": round(max(steady), 1),
    }


def run(
    events: int = 100, spacings_ms: tuple[float, ...] = (20.0, 200.0), database: str = "postgres"
) -> dict[str, Any]:
    """One fresh database and API; one job per spacing; the last spacing gets a quarter of
    the events (it is ten times slower). ``database`` "sqlite": the polled path."""
    rows = []
    with contextlib.ExitStack() as stack:
        if database == "postgres":
            url = stack.enter_context(temp_database())
        else:
            url = f"sqlite:///{stack.enter_context(tempfile.TemporaryDirectory())}/bench.db"
        for i, spacing in enumerate(spacings_ms):
            count = events if i == 0 else max(events // 4, 5)
            rows.append(asyncio.run(measure(url, count, spacing / 1000)))
    return {"rows": rows, "database": database}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--spacing-ms", type=float, action="append", default=None)
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = run(args.events, tuple(args.spacing_ms or (20.0, 200.0)), args.database)
    if args.json:
        json.dump(results, sys.stdout)
        return
    name = {"postgres": "PostgreSQL", "sqlite": "SQLite"}[results["database"]]
    print(f"commit -> SSE arrival, {name}, one SSE client")
    for row in results["rows"]:
        print(
            f"  {row['received']}/{row['events']} events, one every {row['spacing_ms']:g} ms: "
            f"first {row['first_ms']} ms, then p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms  "
            f"max {row['max_ms']} ms" + ("" if row["pushed"] else "  (polled: no listener)")
        )


if __name__ == "__main__":
    main()
