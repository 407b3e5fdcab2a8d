"""GET /v1/jobs search and filters over all of a tenant's jobs, in SQL on SQLite and
PostgreSQL: `q` (question, answer, id prefix), `model` (a role's bound model), date, cost and
latency ranges, `tenant` for admin keys, with cursor paging; bad values are 422s naming
the field. Jobs are stored straight into the database, so each has exactly the usage,
roles and timestamps a filter reads."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert

from core.db.engine import make_engine
from core.db.models import Job
from core.simulator.server import Simulator
from tests.fixtures.api import make_key, serve_api

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
SMALL = {"small": {"pool": "small", "model": "sim-small"}}
LARGE = {"large": {"pool": "large", "model": "sim-large"}}


def job_row(
    tenant: str,
    minute: int,
    question: str,
    *,
    kind: str = "direct",
    status: str = "succeeded",
    answer: str | None = None,
    roles: dict[str, Any] | None = None,
    usage: dict[str, Any] | None = None,
    ran_ms: float | None = None,
) -> dict[str, Any]:
    created = T0 + timedelta(minutes=minute)
    started = created + timedelta(seconds=1) if ran_ms is not None else None
    finished = started + timedelta(milliseconds=ran_ms) if started and ran_ms else None
    return {
        "id": uuid.uuid4().hex, "tenant": tenant, "status": status, "question": question,
        "strategy": {"kind": kind}, "budget": {}, "roles": roles or {}, "seed": 0,
        "priority": "default", "attempts": 1 if started else 0, "created_at": created,
        "started_at": started, "finished_at": finished,
        "result": None if answer is None else {"answer": answer}, "usage": usage,
    }  # fmt: skip


@dataclass
class Jobs:
    url: str
    key: str
    admin_key: str
    tenant: str
    other: str
    ids: dict[str, str]

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key or self.key}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def find(self, key: str | None = None, **params: Any) -> list[str]:
        """Ids of every page's jobs, following the cursor; names where known."""
        names = {v: k for k, v in self.ids.items()}
        out: list[str] = []
        cursor = None
        with self.client(key) as client:
            while True:
                query = {**params, **({"cursor": cursor} if cursor else {})}
                response = client.get("/v1/jobs", params=query)
                assert response.status_code == 200, response.text
                page = response.json()
                out += [names.get(j["id"], j["id"]) for j in page["items"]]
                cursor = page["next_cursor"]
                if cursor is None:
                    return out

    def error(self, key: str | None = None, **params: Any) -> tuple[int, str | None]:
        with self.client(key) as client:
            response = client.get("/v1/jobs", params=params)
        return response.status_code, response.json()["error"].get("field")


@pytest.fixture
def jobs(simulator: Simulator, database_url: str, tmp_path: Path) -> Iterator[Jobs]:
    tenant, other = f"t-{uuid.uuid4().hex[:6]}", f"o-{uuid.uuid4().hex[:6]}"
    rows = {
        "mult": job_row(tenant, 0, "What is 17 * 23?", answer="391", roles=SMALL,
                        usage={"cost": 0.002, "wall_s": 1.5}, ran_ms=1500),
        "paris": job_row(tenant, 1, "Capital of France? 100%_ sure", kind="self_consistency",
                         answer="Paris", roles=LARGE, usage={"cost": 0.05}, ran_ms=4000),
        "apples": job_row(tenant, 2, "How many are 1000 apples?", status="failed",
                          roles=SMALL, usage={"cost": None, "cost_known": False}, ran_ms=250),
        "queued": job_row(tenant, 3, "Still waiting", status="queued", roles=SMALL),
        **{f"needle{i}": job_row(tenant, 10 + i, f"A needle in haystack {i}", answer=str(i),
                                 usage={"cost": 0.0, "wall_s": 0.01})
           for i in range(5)},
        "elsewhere": job_row(other, 4, "What is 17 * 23? (other tenant)", answer="391",
                             roles=SMALL, usage={"cost": 0.002, "wall_s": 1.5}),
    }  # fmt: skip
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(insert(Job), list(rows.values()))
    finally:
        engine.dispose()
    key = make_key(database_url, tenant)
    admin_key = make_key(database_url, f"ops-{uuid.uuid4().hex[:6]}", scope="admin")
    with serve_api(simulator.url, database_url, tmp_path, page_size=2) as url:
        yield Jobs(url, key, admin_key, tenant, other, {k: r["id"] for k, r in rows.items()})


def test_search_covers_every_page_of_question_answer_and_id(jobs: Jobs) -> None:
    # Five matches at two a page: all of them, newest first, across three pages.
    assert jobs.find(q="NEEDLE") == [f"needle{i}" for i in range(4, -1, -1)]
    assert jobs.find(q="17 * 23") == ["mult"]  # the other tenant's twin is not listed
    assert jobs.find(q="paris") == ["paris"]  # the answer, case-insensitive
    # LIKE's wildcards are literal: "1000 apples" would match an unescaped '%100%_%'.
    assert jobs.find(q="100%_") == ["paris"]
    assert jobs.find(q=jobs.ids["apples"][:8].upper()) == ["apples"]  # a short id
    assert jobs.find(q="no such text") == []
    assert jobs.find(q="needle", status="succeeded", strategy="direct", limit=10) == [
        f"needle{i}" for i in range(4, -1, -1)
    ]


def test_model_strategy_and_status_filters(jobs: Jobs) -> None:
    assert jobs.find(model="sim-large") == ["paris"]
    assert jobs.find(model="sim-small") == ["queued", "apples", "mult"]
    assert jobs.find(model="sim-small", status="failed") == ["apples"]
    assert jobs.find(model="small") == []  # a model's name, not a pool's or a role's
    assert jobs.find(strategy="self_consistency") == ["paris"]


def test_date_cost_and_latency_ranges(jobs: Jobs) -> None:
    window = {"created_after": "2026-11-01T12:00:30Z", "created_before": "2026-11-01T12:02:30Z"}
    assert jobs.find(**window) == ["apples", "paris"]
    assert jobs.find(created_before="2026-11-01T13:00:00+01:00") == []  # 12:00 UTC, exclusive
    # An unknown cost (an unpriced pool) and a job without usage match no cost range.
    assert jobs.find(min_cost=0.01) == ["paris"]
    assert jobs.find(max_cost=0.01, q="?") == ["mult"]
    assert jobs.find(min_cost=0.001, max_cost=0.01) == ["mult"]
    # usage.wall_s when the runner wrote it, else finished_at - started_at.
    assert jobs.find(min_latency_ms=1000) == ["paris", "mult"]
    assert jobs.find(min_latency_ms=2000, max_latency_ms=5000) == ["paris"]
    assert jobs.find(max_latency_ms=300, q="apples") == ["apples"]
    assert jobs.find(max_latency_ms=100) == [f"needle{i}" for i in range(4, -1, -1)]


def test_tenant_is_for_admin_keys(jobs: Jobs) -> None:
    assert jobs.error(tenant=jobs.other) == (403, "tenant")
    assert jobs.find(tenant=jobs.tenant, q="17 *") == ["mult"]  # its own: allowed
    assert jobs.find(jobs.admin_key, tenant=jobs.other) == ["elsewhere"]
    assert jobs.find(jobs.admin_key, tenant="*", q="17 * 23") == ["elsewhere", "mult"]
    assert jobs.find(jobs.admin_key) == []  # without `tenant`: the admin key's own tenant
    assert jobs.error(jobs.admin_key, tenant="no such/tenant") == (422, "tenant")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"min_cost": "-1"}, "min_cost"),
        ({"max_cost": "cheap"}, "max_cost"),
        ({"min_cost": "nan"}, "min_cost"),
        ({"max_latency_ms": "inf"}, "max_latency_ms"),
        ({"min_cost": "0.5", "max_cost": "0.1"}, "max_cost"),
        ({"min_latency_ms": "10", "max_latency_ms": "1"}, "max_latency_ms"),
        ({"created_before": "yesterday"}, "created_before"),
        ({"created_before": "1700000000"}, "created_before"),
        ({"created_after": "2026-11-02T00:00:00Z", "created_before": "2026-11-01T00:00:00Z"},
         "created_before"),
        ({"q": "x" * 201}, "q"),
        ({"q": "a\x00b"}, "q"),
        ({"model": "sim\x01"}, "model"),
        ({"strategy": "no_such_strategy"}, "strategy"),
        ({"status": "done"}, "status"),
    ],
)  # fmt: skip
def test_bad_values_are_422_naming_the_field(
    jobs: Jobs, params: dict[str, str], field: str
) -> None:
    assert jobs.error(**params) == (422, field)
