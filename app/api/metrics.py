"""Prometheus metrics: the database's figures, this process's counts, and its requests.

Job, queue, breaker and journal figures are aggregated from SQL at scrape time, not
counted in-process: jobs run and breakers trip in worker processes the API never sees,
and the database is the one place that has them all. So every API replica reports the
same values (alert on ``max``, not ``sum``, across replicas), and they survive restarts.
The cost is a few grouped queries per scrape (shared by scrapes closer together than
``ApiSettings.metrics_cache_s``).

    ponder_jobs{status}                            gauge
    ponder_queue_depth{priority}                   gauge (queued jobs: the database, not
                                                   the broker, so any broker works)
    ponder_jobs_in_flight                          gauge (running jobs)
    ponder_breaker_state{pool,endpoint}            gauge: 0 closed, 1 half-open, 2 open;
                                                   the worst of this process's breaker
                                                   and every worker's report; endpoint
                                                   by position ("1"), never by URL
    ponder_breaker_transitions_total{role,state}   counter (state: open | closed)
    ponder_model_tokens_total{role,kind}           counter (live calls; kind: prompt |
                                                   completion)
    ponder_model_cost_usd_total{role}              counter (live calls)
    ponder_model_call_latency_seconds{role}        histogram (live calls, retries included)

What this process counts as it runs jobs (the interactive lane, the in-process
executor) comes from ``core.metrics``: ``ponder_model_calls_total``,
``ponder_model_call_retries_total``, ``ponder_tool_calls_total``,
``ponder_job_duration_seconds``, ``ponder_job_tokens``, ``ponder_job_cost_usd_total``.
Workers serve the same names on their own port (``workers.metrics``). And the requests:

    ponder_http_requests_total{method,route,status}        counter (this process)
    ponder_http_request_duration_seconds{method,route}     histogram (this process)
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core import metrics as process_metrics
from core.breaker_reports import open_reports, transition_counts
from core.db import repo
from core.jobs import PRIORITIES
from core.pools.client import PoolClient

CALL_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
HTTP_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
BREAKER_STATE = {"closed": 0, "half_open": 1, "open": 2}


@dataclass
class _Snapshot:
    at: float = 0.0
    jobs: dict[tuple[str, str], int] = field(default_factory=dict)
    calls: list[dict[str, Any]] = field(default_factory=list)
    breakers: list[tuple[str, str, int]] = field(default_factory=list)
    breaker_states: list[tuple[str, str, int]] = field(default_factory=list)


class _DatabaseCollector:
    def __init__(self) -> None:
        self.snapshot = _Snapshot()

    def collect(self) -> Iterable[Metric]:
        snap = self.snapshot
        by_status: dict[str, int] = dict.fromkeys(STATUSES, 0)
        by_priority: dict[str, int] = dict.fromkeys(PRIORITIES, 0)
        for (status, priority), n in snap.jobs.items():
            by_status[status] = by_status.get(status, 0) + n
            if status == "queued":
                by_priority[priority] = by_priority.get(priority, 0) + n
        jobs = GaugeMetricFamily("ponder_jobs", "Jobs by status.", labels=["status"])
        for status in sorted(by_status):
            jobs.add_metric([status], by_status[status])
        yield jobs
        queue = GaugeMetricFamily(
            "ponder_queue_depth", "Jobs waiting for a worker, by priority.", labels=["priority"]
        )
        for priority in sorted(by_priority):
            queue.add_metric([priority], by_priority[priority])
        yield queue
        yield GaugeMetricFamily(
            "ponder_jobs_in_flight", "Jobs running now.", value=by_status["running"]
        )
        states = GaugeMetricFamily(
            "ponder_breaker_state",
            "Circuit breaker per endpoint (by position): 0 closed, 1 half-open, 2 open; "
            "the worst of this process's and every worker's report.",
            labels=["pool", "endpoint"],
        )
        for pool, endpoint, severity in snap.breaker_states:
            states.add_metric([pool, endpoint], severity)
        yield states
        tokens = CounterMetricFamily(
            "ponder_model_tokens", "Tokens of live model calls.", labels=["role", "kind"]
        )
        cost = CounterMetricFamily(
            "ponder_model_cost_usd", "Cost of live model calls.", labels=["role"]
        )
        latency = HistogramMetricFamily(
            "ponder_model_call_latency_seconds",
            "Latency of live model calls, retries included.",
            labels=["role"],
        )
        for row in snap.calls:
            role = row["role"]
            tokens.add_metric([role, "prompt"], row["prompt_tokens"])
            tokens.add_metric([role, "completion"], row["completion_tokens"])
            cost.add_metric([role], row["cost"])
            buckets = [
                (_le(bound), float(n))
                for bound, n in zip(CALL_BUCKETS_S, row["buckets"], strict=True)
            ]
            buckets.append(("+Inf", float(row["count"])))
            latency.add_metric([role], buckets, sum_value=row["latency_ms_sum"] / 1000.0)
        yield from (tokens, cost, latency)
        transitions = CounterMetricFamily(
            "ponder_breaker_transitions",
            "Circuit breaker openings and closings reported by workers.",
            labels=["role", "state"],
        )
        for role, state, count in snap.breakers:
            transitions.add_metric([role, state], count)
        yield transitions


def _le(bound: float) -> str:
    return repr(float(bound))


class _ProcessCollector:
    """This process's ``core.metrics`` series, looked up at each scrape (tests may swap
    them with ``core.metrics.configure``)."""

    def collect(self) -> Iterable[Metric]:
        return process_metrics.current().registry.collect()


def breaker_states(
    pools: Mapping[str, PoolClient], reports: Mapping[tuple[str, str], Iterable[Any]]
) -> list[tuple[str, str, int]]:
    """(pool, endpoint position, state) for every configured endpoint."""
    out = []
    for pool in sorted(pools):
        for position, snap in enumerate(pools[pool].snapshot(), start=1):
            reported = [r.state for r in reports.get((pool, snap.url), [])]
            worst = max(BREAKER_STATE[s] for s in [snap.breaker, *reported])
            out.append((pool, str(position), worst))
    return out


class ApiMetrics:
    """One registry per app, so several apps in one process (tests) never collide."""

    def __init__(self, cache_s: float) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.cache_s = cache_s
        self._db = _DatabaseCollector()
        self.registry.register(self._db)
        self.registry.register(_ProcessCollector())
        self.requests = Counter(
            "ponder_http_requests",
            "HTTP requests served by this process.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "ponder_http_request_duration_seconds",
            "Time to the response's last byte, by route template.",
            ["method", "route"],
            buckets=HTTP_BUCKETS_S,
            registry=self.registry,
        )

    async def render(
        self,
        sessions: async_sessionmaker[AsyncSession],
        pools: Mapping[str, PoolClient] | None = None,
    ) -> bytes:
        """The scrape; ``pools``: the configured pools whose breakers to report."""
        if time.monotonic() - self._db.snapshot.at >= self.cache_s:
            pools = pools or {}
            reset_s = {name: pool.settings.breaker_reset_s for name, pool in pools.items()}
            async with sessions() as session:
                jobs = await repo.count_jobs_by_status_and_priority(session)
                calls = await repo.live_call_stats(session, [b * 1000.0 for b in CALL_BUCKETS_S])
                breakers = list(await transition_counts(session))
                reports = await open_reports(session, reset_s) if reset_s else {}
            self._db.snapshot = _Snapshot(
                time.monotonic(), jobs, calls, breakers, breaker_states(pools, reports)
            )
        return generate_latest(self.registry)


class HttpMetricsMiddleware:
    """Counts requests by route *template* (``/v1/jobs/{job_id}``), never by raw path,
    so job ids cannot blow up the label space."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = str(scope.get("method", ""))
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.duration.labels(method, template).observe(time.perf_counter() - started)
