"""Latency of the REST API's hot paths: ``POST /v1/jobs`` (202) and ``GET /v1/jobs/{id}``.

    python bench/api_latency.py [--requests 500] [--postgres postgresql://postgres@127.0.0.1/test]

A real uvicorn server (in a thread) on SQLite and on PostgreSQL, one keep-alive client
sending requests one after another. Jobs are accepted but not run (a no-op executor), so
the figures are the API's own cost: validation, auth, one transaction, the response.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _shared import percentile

from app.api.executor import ExecutorContext, Readiness
from app.api.main import create_app
from app.api.settings import ApiSettings
from core.db.migrate import upgrade
from core.settings import PoolSettings, Settings
from tests.fixtures.api import ApiServer


class NoopExecutor:
    name = "noop"

    async def start(self, context: ExecutorContext) -> None:
        return None

    async def submit(self, job_id: str, *, priority: str, max_seconds: float | None = None) -> None:
        return None

    async def ready(self) -> Readiness:
        return Readiness(True, "noop")

    async def close(self) -> None:
        return None


def measure(database_url: str, data_dir: Path, n: int) -> dict[str, list[float]]:
    pool = PoolSettings(endpoints=["http://127.0.0.1:9"], model="m", kind="simulator")
    settings = Settings(
        database_url=database_url, data_dir=data_dir, pools={"small": pool},
        _env_file=None,  # type: ignore[call-arg]
    )  # fmt: skip
    app = create_app(settings, executor=NoopExecutor(), api_settings=ApiSettings(_env_file=None))  # type: ignore[call-arg]
    out: dict[str, list[float]] = {"POST /v1/jobs": [], "GET /v1/jobs/{id}": []}
    body = {"question": "What is 2 + 3?", "strategy": {"kind": "self_consistency", "n": 8}}
    with ApiServer(app) as server, httpx.Client(base_url=server.url) as client:
        for _ in range(20):  # warm-up: connections, caches
            client.get(f"/v1/jobs/{client.post('/v1/jobs', json=body).json()['id']}")
        ids = []
        for _ in range(n):
            t = time.perf_counter()
            response = client.post("/v1/jobs", json=body)
            out["POST /v1/jobs"].append((time.perf_counter() - t) * 1000)
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
        for job_id in ids:
            t = time.perf_counter()
            response = client.get(f"/v1/jobs/{job_id}")
            out["GET /v1/jobs/{id}"].append((time.perf_counter() - t) * 1000)
            assert response.status_code == 200
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sqlite_url = f"sqlite:///{Path(tmp) / 'ponder.db'}"
        upgrade(sqlite_url)
        rows.append(("sqlite", measure(sqlite_url, Path(tmp), args.requests)))
        admin = make_url(args.postgres).set(drivername="postgresql")
        name = f"ponder_bench_{uuid.uuid4().hex[:8]}"
        libpq = admin.render_as_string(hide_password=False)
        with psycopg.connect(libpq, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            pg_url = admin.set(database=name).render_as_string(hide_password=False)
            upgrade(pg_url)
            rows.append(("postgres", measure(pg_url, Path(tmp), args.requests)))
        finally:
            with psycopg.connect(libpq, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
    print(f"{'backend':9} {'endpoint':20} {'n':>5} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}")
    for backend, results in rows:
        for endpoint, values in results.items():
            print(
                f"{backend:9} {endpoint:20} {len(values):5d} {statistics.median(values):8.2f} "
                f"{percentile(values, 0.9):8.2f} {percentile(values, 0.99):8.2f}"
            )


if __name__ == "__main__":
    main()
