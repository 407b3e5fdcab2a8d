"""``ponder_client``'s listings against a real API server on PostgreSQL: ``list_jobs``
with the server's filters (each narrows the listing; an unset one is not sent), and the
experiments methods reading back what was stored through the API, by the client's own
``create_experiment`` and by ``ponder eval --url``'s store. Jobs are stored straight into
the database (``test_job_search``'s rows), so each has exactly the usage, roles and
timestamps a filter reads; every call is the client's own HTTP.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert

from core.db.engine import make_engine
from core.db.models import Job
from core.simulator.server import Simulator
from evals.arms import make_arm
from evals.experiments import RestStore
from evals.results import EvalRun, Row
from evals.stats import wilson_interval
from ponder_client import AsyncPonderClient, PonderAPIError, PonderClient
from tests.fixtures.api import make_key, serve_api
from tests.integration.test_job_search import LARGE, SMALL, T0, job_row

pytestmark = pytest.mark.postgres


@dataclass
class Server:
    url: str
    keys: dict[str, str]
    """By role: ``tenant`` (the jobs' owner), ``other`` (another tenant), ``admin``."""
    ids: dict[str, str]
    """Job ids by name."""

    def client(self, who: str = "tenant", **kwargs: Any) -> PonderClient:
        return PonderClient(self.url, api_key=self.keys[who], **kwargs)

    def names(self, ids: list[str]) -> list[str]:
        by_id = {v: k for k, v in self.ids.items()}
        return [by_id.get(i, i) for i in ids]


@pytest.fixture
def server(simulator: Simulator, clean_pg_database_url: str, tmp_path: Path) -> Iterator[Server]:
    database_url = clean_pg_database_url
    tenant, other = f"t-{uuid.uuid4().hex[:6]}", f"o-{uuid.uuid4().hex[:6]}"
    rows = {
        "mult": job_row(tenant, 0, "What is 17 * 23?", answer="391", roles=SMALL,
                        usage={"cost": 0.002, "wall_s": 1.5}, ran_ms=1500),
        "paris": job_row(tenant, 1, "Capital of France?", kind="self_consistency",
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
    keys = {
        "tenant": make_key(database_url, tenant),
        "other": make_key(database_url, other),
        "admin": make_key(database_url, f"ops-{uuid.uuid4().hex[:6]}", scope="admin"),
    }
    with serve_api(simulator.url, database_url, tmp_path, page_size=2) as url:
        yield Server(url, keys, {k: r["id"] for k, r in rows.items()})


def every(ponder: PonderClient, **filters: Any) -> list[str]:
    """Ids of the listing's jobs over all its pages, newest first."""
    ids: list[str] = []
    cursor = None
    while True:
        page = ponder.list_jobs(cursor=cursor, **filters)
        ids += [j.id for j in page.items]
        cursor = page.next_cursor
        if cursor is None:
            return ids


NEEDLES = [f"needle{i}" for i in range(4, -1, -1)]


def test_each_job_filter_narrows_the_listing(server: Server) -> None:
    with server.client() as ponder:

        def find(**filters: Any) -> list[str]:
            return server.names(every(ponder, **filters))

        everything = find()
        assert everything == [*NEEDLES, "queued", "apples", "paris", "mult"]
        assert find(q="NEEDLE") == NEEDLES  # five matches, two a page
        assert find(q="paris") == ["paris"]  # the answer, case-insensitive
        assert find(q=server.ids["apples"][:8]) == ["apples"]  # a short id
        assert find(model="sim-large") == ["paris"]
        assert find(model="sim-small", status="failed") == ["apples"]
        assert find(strategy="self_consistency") == ["paris"]
        # Datetimes go as ISO 8601; one without a zone is UTC, as the server reads it.
        after, before = T0 + timedelta(seconds=30), T0 + timedelta(minutes=2, seconds=30)
        assert find(created_after=after, created_before=before) == ["apples", "paris"]
        naive = before.replace(tzinfo=None)
        assert find(created_after=after.isoformat(), created_before=naive) == ["apples", "paris"]
        # An unknown cost (the failed job's unpriced pool) matches no cost range.
        assert find(min_cost=0.001, max_cost=0.01) == ["mult"]
        assert find(min_cost=0.01) == ["paris"]
        assert find(min_latency_ms=1000) == ["paris", "mult"]
        assert find(min_latency_ms=2000, max_latency_ms=5000) == ["paris"]
        assert find(max_latency_ms=100) == NEEDLES
        # The arguments the client had before the filters, as they were called then.
        page = ponder.list_jobs(status="succeeded", strategy="direct",
                                created_after="2026-11-01T12:05:00Z", limit=10)  # fmt: skip
        assert server.names([j.id for j in page.items]) == NEEDLES and page.next_cursor is None


def test_an_unset_filter_is_not_sent(server: Server) -> None:
    sent: list[httpx.Request] = []
    with (
        httpx.Client(event_hooks={"request": [sent.append]}, timeout=30) as http,
        server.client(http_client=http) as ponder,
    ):
        page = ponder.list_jobs(q="needle", model=None, min_cost=None, tenant=None, limit=10)
    assert dict(sent[0].url.params) == {"q": "needle", "limit": "10"}
    assert server.names([j.id for j in page.items]) == NEEDLES


def test_a_bad_filter_or_another_tenant_is_an_error_naming_the_field(server: Server) -> None:
    with server.client() as ponder:
        cases: list[tuple[dict[str, Any], int, str]] = [
            ({"tenant": "*"}, 403, "tenant"),
            ({"min_cost": -1}, 422, "min_cost"),
            ({"min_latency_ms": 10, "max_latency_ms": 1}, 422, "max_latency_ms"),
            ({"created_after": T0, "created_before": T0 - timedelta(days=1)}, 422,
             "created_before"),
            ({"strategy": "no_such_strategy"}, 422, "strategy"),
        ]  # fmt: skip
        for filters, status, field in cases:
            with pytest.raises(PonderAPIError) as error:
                ponder.list_jobs(**filters)
            assert (error.value.status, error.value.field) == (status, field), filters
    with server.client("admin") as admin:
        assert server.names(every(admin, tenant="*", q="17 * 23")) == ["elsewhere", "mult"]
        assert every(admin) == []  # without `tenant`: the admin key's own tenant's


async def test_the_async_client_sends_the_same_filters(server: Server) -> None:
    async with AsyncPonderClient(server.url, api_key=server.keys["tenant"]) as ponder:
        page = await ponder.list_jobs(model="sim-small", created_before=T0 + timedelta(hours=1),
                                      min_latency_ms=200, limit=10)  # fmt: skip
        searched = await ponder.list_jobs(q="needle", max_cost=0.0, limit=3)
    assert server.names([j.id for j in page.items]) == ["apples", "mult"]
    assert server.names([j.id for j in searched.items]) == NEEDLES[:3]
    assert searched.next_cursor is not None


DIRECT: dict[str, Any] = {
    "label": "direct", "spec": {"kind": "direct"}, "params": {"kind": "direct"},
    "roles": ["small"],
}  # fmt: skip
VOTE: dict[str, Any] = {
    "label": "vote", "spec": {"kind": "self_consistency", "n": 3},
    "params": {"kind": "self_consistency", "n": 3}, "roles": ["small"],
}  # fmt: skip


def row(arm: str, index: int, job_id: str | None, *, correct: bool, tokens: int) -> dict[str, Any]:
    return {
        "problem_id": f"p{index + 1}", "problem_index": index, "strategy": arm,
        "job_id": job_id, "status": "succeeded", "answer": "391" if correct else "7",
        "expected": "391", "correct": correct, "tokens": {"small": tokens},
        "completion_tokens": tokens, "calls": 1, "latency_s": 0.5 + index, "cost": 0.001,
    }  # fmt: skip


def test_an_experiment_created_through_the_api_reads_back(server: Server) -> None:
    with server.client() as ponder:
        made = ponder.create_experiment(
            "mult-vs-vote", [DIRECT, VOTE], problems=2,
            dataset={"name": "tiny.jsonl"}, settings={"seed": 7},
        )  # fmt: skip
        assert [a.summary.n if a.summary else None for a in made.arms] == [0, 0]
        ids = server.ids
        stored = ponder.add_experiment_rows(made.id, [
            row("direct", 0, ids["mult"], correct=True, tokens=10),
            row("direct", 1, ids["needle0"], correct=False, tokens=30),
            row("vote", 0, ids["paris"], correct=True, tokens=40),
        ])  # fmt: skip
        # The rest of the vote arm, later (as ponder eval stores each arm when it ends).
        ponder.add_experiment_rows(
            made.id, [row("vote", 1, ids["needle1"], correct=True, tokens=50)]
        )
        experiment = ponder.experiment(made.id)
        grid = ponder.experiment_rows(made.id)
        newer = [ponder.create_experiment(f"newer-{i}", [DIRECT]).id for i in range(2)]
        pages = [ponder.list_experiments()]
        while pages[-1].next_cursor is not None:
            pages.append(ponder.list_experiments(cursor=pages[-1].next_cursor))

    half = stored.arm("vote").summary  # what add_experiment_rows answered: one vote row
    assert half is not None and (half.n, half.correct) == (1, 1)
    assert (experiment.name, experiment.problems, experiment.settings) == (
        "mult-vs-vote", 2, {"seed": 7},
    )  # fmt: skip
    assert experiment.dataset.name == "tiny.jsonl" and experiment.links.rows.endswith("/rows")
    direct, vote = experiment.arm("direct").summary, experiment.arm("vote").summary
    assert direct is not None and vote is not None
    assert (direct.n, direct.correct, direct.accuracy) == (2, 1, 0.5)
    assert (direct.ci_low, direct.ci_high) == pytest.approx(wilson_interval(1, 2))
    assert direct.mean_tokens_by_role == {"small": 20.0}
    assert direct.total_cost == pytest.approx(0.002)
    assert (vote.n, vote.correct, vote.mean_tokens) == (2, 2, 45.0)
    assert experiment.arm("vote").params == {"kind": "self_consistency", "n": 3}
    with pytest.raises(KeyError):
        experiment.arm("no such arm")

    assert grid.arms == ["direct", "vote"]
    assert [(p.index, p.id) for p in grid.problems] == [(0, "p1"), (1, "p2")]
    cells = {(r.arm, r.problem_index): r for r in grid.rows}
    assert server.names([cells[(a, p)].job_id or "" for a in (0, 1) for p in (0, 1)]) == [
        "mult", "needle0", "paris", "needle1",
    ]  # fmt: skip
    assert (cells[(0, 1)].answer, cells[(0, 1)].correct, cells[(0, 1)].latency_s) == (
        "7", False, 1.5,
    )  # fmt: skip

    # Newest first, two a page (the server's page size here), across every page.
    listed = [e.id for page in pages for e in page.items]
    assert listed == [*reversed(newer), made.id] and len(pages) == 2
    assert pages[1].items[0].arm("direct").summary == direct


def test_experiments_are_the_tenants_own(server: Server) -> None:
    with server.client() as ponder:
        made = ponder.create_experiment("mine", [DIRECT], problems=1)
        # A row may only name one of the tenant's jobs.
        with pytest.raises(PonderAPIError) as foreign:
            ponder.add_experiment_rows(
                made.id, [row("direct", 0, server.ids["elsewhere"], correct=True, tokens=1)]
            )
        with pytest.raises(PonderAPIError) as unknown_arm:
            ponder.add_experiment_rows(made.id, [row("nope", 0, None, correct=True, tokens=1)])
        with pytest.raises(PonderAPIError) as bad_arm:
            ponder.create_experiment("bad", [{**VOTE, "params": {**VOTE["params"], "n": 0}}])
    assert (foreign.value.status, foreign.value.field) == (422, "rows.0.job_id")
    assert (unknown_arm.value.status, unknown_arm.value.field) == (422, "rows.0.strategy")
    assert (bad_arm.value.status, bad_arm.value.field) == (422, "arms.0.params.n")
    with server.client("other") as rival:
        assert rival.list_experiments().items == []
        for read in (rival.experiment, rival.experiment_rows):
            with pytest.raises(PonderAPIError) as missing:
                read(made.id)
            assert (missing.value.status, missing.value.code) == (404, "not_found")


async def test_an_eval_stored_over_the_api_reads_back_with_its_summary(server: Server) -> None:
    """``ponder eval --url``'s store writes; the async client reads the same numbers as
    the eval's own summary (``results.json``), field for field."""
    arms = [make_arm({"kind": "direct"}), make_arm({"kind": "self_consistency", "n": 2})]
    cost = {arms[0].label: 0.002, arms[1].label: None}  # the second arm's pool: no prices
    rows = [
        Row(problem_id=f"p{i}", problem_index=i, strategy=arm.label, job_id=None,
            status="succeeded" if i < 2 else "failed", answer=str(i), expected="1",
            correct=i == 1, tokens={"small": 10 * (i + 1)}, prompt_tokens={"small": 5},
            completion_tokens=10 * (i + 1), calls=1 + a, latency_s=0.25 * (i + 1),
            cost=cost[arm.label], live_calls=1 + a, reasoning_tokens=i)
        for a, arm in enumerate(arms) for i in range(3)
    ]  # fmt: skip
    run = EvalRun(name="eval-over-url", created_at="", arms=arms, problems=3,
                  settings={"backend": server.url}, rows=rows)  # fmt: skip
    async with AsyncPonderClient(server.url, api_key=server.keys["tenant"]) as ponder:
        store = RestStore(ponder)
        experiment_id = await store.create(run)
        await store.save_rows(experiment_id, rows)
        experiment = await ponder.experiment(experiment_id)
        grid = await ponder.experiment_rows(experiment_id)
        (first,) = (await ponder.list_experiments(limit=1)).items
        # Rows read back post again as they are, less their arm's position.
        arms_in = [
            a.model_dump(include={"label", "spec", "params", "roles"}) for a in experiment.arms
        ]
        copy = await ponder.create_experiment("copy", arms_in, problems=3)
        rows_in = [r.model_dump(exclude={"arm"}) for r in grid.rows]
        copied = await ponder.add_experiment_rows(copy.id, rows_in)

    assert first.id == experiment_id and experiment.calls.live == 3 + 6
    expected = run.to_json()["summary"]
    for arm, summary in zip(experiment.arms, expected, strict=True):
        assert arm.label == summary["strategy"] and arm.summary is not None
        assert arm.summary.model_dump() == {
            k: v for k, v in summary.items() if k not in ("strategy", "spec")
        }
    priced, unpriced = (a.summary for a in experiment.arms)
    assert priced is not None and unpriced is not None
    assert (priced.failed, priced.cost_known) == (1, True)
    assert priced.total_cost == pytest.approx(0.006)
    assert (unpriced.cost_known, unpriced.mean_cost) == (False, None)
    assert [asdict(r) for r in rows] == [asdict(Row.from_json(r.model_dump())) for r in grid.rows]
    assert [a.summary for a in copied.arms] == [a.summary for a in experiment.arms]
