"""Prometheus metrics: the jobs and model calls in the database, and this API's requests.

Job and call metrics are aggregated from SQL at scrape time, not counted in-process:
calls happen in worker processes the API never sees, and the database is the one place
that has them all. So every API replica reports the same totals, and they survive
restarts. The cost is one grouped query over ``model_calls`` per scrape (shared by
scrapes closer together than ``ApiSettings.metrics_cache_s``).

    ponder_jobs{status}                            gauge
    ponder_model_calls_total{role}                 counter (live calls only)
    ponder_model_tokens_total{role,kind}           counter (kind: prompt | completion)
    ponder_model_cost_total{role}                  counter
    ponder_model_call_latency_seconds{role}        histogram
    ponder_breaker_transitions_total{role,state}   counter (state: open | closed; every
                                                   process's breakers, from breaker_events)
    ponder_http_requests_total{method,route,status}        counter (this process)
    ponder_http_request_duration_seconds{method,route}     histogram (this process)
"""

from __future__ import annotations

import time
from collections.abc import Iterable
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

from core.breaker_reports import transition_counts
from core.db import repo

CALL_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
HTTP_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


@dataclass
class _Snapshot:
    at: float = 0.0
    jobs: dict[str, int] = field(default_factory=dict)
    calls: list[dict[str, Any]] = field(default_factory=list)
    breakers: list[tuple[str, str, int]] = field(default_factory=list)


class _DatabaseCollector:
    def __init__(self) -> None:
        self.snapshot = _Snapshot()

    def collect(self) -> Iterable[Metric]:
        snap = self.snapshot
        jobs = GaugeMetricFamily("ponder_jobs", "Jobs by status.", labels=["status"])
        for status in sorted(set(STATUSES) | set(snap.jobs)):
            jobs.add_metric([status], snap.jobs.get(status, 0))
        yield jobs
        calls = CounterMetricFamily(
            "ponder_model_calls", "Live model calls (journal rows paid for).", labels=["role"]
        )
        tokens = CounterMetricFamily(
            "ponder_model_tokens", "Tokens of live model calls.", labels=["role", "kind"]
        )
        cost = CounterMetricFamily("ponder_model_cost", "Cost of live calls.", labels=["role"])
        latency = HistogramMetricFamily(
            "ponder_model_call_latency_seconds",
            "Latency of live model calls, retries included.",
            labels=["role"],
        )
        for row in snap.calls:
            role = row["role"]
            calls.add_metric([role], row["count"])
            tokens.add_metric([role, "prompt"], row["prompt_tokens"])
            tokens.add_metric([role, "completion"], row["completion_tokens"])
            cost.add_metric([role], row["cost"])
            buckets = [
                (_le(bound), float(n))
                for bound, n in zip(CALL_BUCKETS_S, row["buckets"], strict=True)
            ]
            buckets.append(("+Inf", float(row["count"])))
            latency.add_metric([role], buckets, sum_value=row["latency_ms_sum"] / 1000.0)
        yield from (calls, tokens, cost, latency)
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


class ApiMetrics:
    """One registry per app, so several apps in one process (tests) never collide."""

    def __init__(self, cache_s: float) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.cache_s = cache_s
        self._db = _DatabaseCollector()
        self.registry.register(self._db)
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

    async def render(self, sessions: async_sessionmaker[AsyncSession]) -> bytes:
        if time.monotonic() - self._db.snapshot.at >= self.cache_s:
            async with sessions() as session:
                jobs = await repo.count_jobs_by_status(session)
                calls = await repo.live_call_stats(session, [b * 1000.0 for b in CALL_BUCKETS_S])
                breakers = list(await transition_counts(session))
            self._db.snapshot = _Snapshot(time.monotonic(), jobs, calls, breakers)
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
