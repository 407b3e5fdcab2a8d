"""Time to interactive of the dashboard's job view on a large synthetic trace.

    python bench/dashboard_tti.py [--spans 5000] [--runs 5] [--postgres URL]

A real uvicorn server (in a thread) on SQLite (or PostgreSQL) holding one finished job
with N spans and their journal entries (``tests/e2e/conftest.write_synthetic_trace``),
and Debian's headless Chromium loading ``/dashboard#/jobs/<id>`` again and again.
Time to interactive = from navigation start to the view's ready mark, which is set after
the first frame with the span tree, timeline and budget chart drawn and every handler
attached. Also shown: the page's own split (spans request, data parsed) and the server's
cost of the dashboard's spans route next to ``GET /v1/jobs/{id}/trace``.
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

from api_latency import NoopExecutor
from playwright.sync_api import sync_playwright

from app.api.main import create_app
from app.api.settings import ApiSettings
from core.db.migrate import upgrade
from core.settings import PoolSettings, Settings
from tests.e2e.conftest import CHROMIUM_ARGS, DEFAULT_CHROMIUM, write_synthetic_trace
from tests.fixtures.api import ApiServer

PAGE_TIMES = """() => {
  const mark = (name) => performance.getEntriesByName(name)[0].startTime;
  const spans = performance.getEntriesByType('resource').find(e => e.name.includes('/spans'));
  return {tti: mark('ponder:ready:job'), data: mark('ponder:job:data'),
          request: spans.responseEnd - spans.requestStart, bytes: spans.encodedBodySize};
}"""


def server_ms(client: httpx.Client, path: str, n: int = 5) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - t) * 1000)
        assert response.status_code == 200, response.text
    return statistics.median(times)


def measure(database_url: str, data_dir: Path, spans: int, runs: int, chromium: str) -> None:
    upgrade(database_url)
    job_id = write_synthetic_trace(database_url, spans=spans)
    pool = PoolSettings(endpoints=["http://127.0.0.1:9"], model="m", kind="simulator")
    settings = Settings(
        database_url=database_url, data_dir=data_dir, pools={"small": pool},
        _env_file=None,  # type: ignore[call-arg]
    )  # fmt: skip
    app = create_app(settings, executor=NoopExecutor(), api_settings=ApiSettings(_env_file=None))  # type: ignore[call-arg]
    with ApiServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        route = server_ms(client, f"/dashboard/api/jobs/{job_id}/spans")
        trace = server_ms(client, f"/v1/jobs/{job_id}/trace")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            cold, warm = [], []
            for run in range(runs + 1):  # the first round warms the server and is not counted
                # A fresh context has an empty HTTP cache: the first view of the job.
                context = browser.new_context(viewport={"width": 1400, "height": 1000})
                page = context.new_page()
                page.goto(f"{server.url}/dashboard#/jobs/{job_id}")
                page.wait_for_selector("body[data-ready=job]", timeout=60_000)
                first = page.evaluate(PAGE_TIMES)
                page.reload()  # the same job again: the browser revalidates its copy (304)
                page.wait_for_selector("body[data-ready=job]", timeout=60_000)
                if run:
                    cold.append(first)
                    warm.append(page.evaluate(PAGE_TIMES))
                context.close()
            browser.close()
    report(spans, cold, warm, route, trace)


def report(spans: int, cold: list[dict[str, float]], warm: list[dict[str, float]],
           route: float, trace: float) -> None:  # fmt: skip
    def med(samples: list[dict[str, float]], key: str) -> float:
        return statistics.median(s[key] for s in samples)

    def runs(samples: list[dict[str, float]]) -> str:
        return ", ".join(f"{s['tti']:.0f}" for s in samples)

    print(
        f"{spans:,} spans, {len(cold)} runs, medians ({cold[0]['bytes'] / 1e6:.2f} MB on the wire)"
    )
    print(f"  time to interactive, first view     {med(cold, 'tti'):6.0f} ms  (runs: {runs(cold)})")
    print(f"  time to interactive, reopened (304) {med(warm, 'tti'):6.0f} ms  (runs: {runs(warm)})")
    print(f"  first view: spans request           {med(cold, 'request'):6.0f} ms")
    print(f"  first view: data parsed and indexed {med(cold, 'data'):6.0f} ms after navigation")
    print(f"  first view: first frame after that  {med(cold, 'tti') - med(cold, 'data'):6.0f} ms")
    print(f"  server: GET /dashboard/api/jobs/{{id}}/spans {route:6.0f} ms")
    print(f"  server: GET /v1/jobs/{{id}}/trace            {trace:6.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spans", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--postgres", help="admin URL; a scratch database is made and dropped")
    parser.add_argument("--chromium", default=DEFAULT_CHROMIUM)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.postgres:
            measure(f"sqlite:///{tmp}/ponder.db", Path(tmp), args.spans, args.runs, args.chromium)
            return
        name = f"ponder_bench_{uuid.uuid4().hex[:8]}"
        admin = psycopg.connect(args.postgres.replace("+psycopg", ""), autocommit=True)
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            url = make_url(args.postgres).set(database=name).render_as_string(hide_password=False)
            measure(url, Path(tmp), args.spans, args.runs, args.chromium)
        finally:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
            admin.close()


if __name__ == "__main__":
    main()
