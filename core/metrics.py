"""What a process does, counted where it happens: model calls, tool calls, finished jobs.

The hooks (one line each) sit where the events happen — ``core.role_model`` (every model
call, journal hits included), ``core.tools.journaled`` (every tool call) and
``core.runner`` (a job's start and end) — and count into this process's
``ProcessMetrics``. Who exports them:

- the API process (the interactive lane, the in-process executor): ``/metrics``, beside
  the figures it reads from the database (``app.api.metrics``);
- a worker: its own ``/metrics`` port, ``PONDER_METRICS_WORKER_PORT``
  (``workers.metrics``), in ``prometheus_client``'s multiprocess mode so the prefork
  children's counts reach the one port of their parent.

Series (``tenant`` only with ``PONDER_METRICS_TENANT_LABEL=true``)::

    ponder_model_calls_total{role,model,outcome[,tenant]}     counter
        outcome: ok | journal_hit | error | timeout | cancelled | journal_miss
    ponder_model_call_retries_total{role,model[,tenant]}      counter (attempts retried)
    ponder_tool_calls_total{tool,outcome[,tenant]}            counter
        outcome: ok | journal_hit | error | cancelled | journal_miss
    ponder_job_duration_seconds{strategy,outcome[,tenant]}    histogram (outcome: status)
    ponder_job_tokens{strategy[,tenant]}                      histogram (prompt+completion)
    ponder_job_cost_usd_total{strategy[,tenant]}              counter

Labels are bounded: roles, models, tools and strategies come from the operator's
configuration and the strategy registry, outcomes from the lists above, and tenants
(opt-in) stop at ``PONDER_METRICS_TENANT_LIMIT`` distinct values per process; later ones
count as ``other``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.errors import JournalMiss, ModelTimeout
from strategies.protocol import BudgetExhausted

JOB_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
JOB_TOKENS_BUCKETS = (
    100.0, 300.0, 1000.0, 3000.0, 10_000.0, 30_000.0, 100_000.0, 300_000.0, 1_000_000.0,
)  # fmt: skip
OTHER_TENANT = "other"

log = logging.getLogger(__name__)


class MetricsSettings(BaseSettings):
    """What every process counts and how a worker exports it (``PONDER_METRICS_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="PONDER_METRICS_", extra="ignore", use_attribute_docstrings=True
    )

    tenant_label: bool = False
    """Add a ``tenant`` label to call and job series. Off by default: every tenant
    multiplies the series an operator's Prometheus stores."""
    tenant_limit: int = Field(default=50, ge=1)
    """With ``tenant_label``: distinct tenants a process labels; later ones count as
    ``other``, so the label stays bounded whatever the number of tenants."""
    worker_port: int | None = Field(default=None, ge=1, le=65535)
    """Port on which ``ponder worker`` serves its ``/metrics`` (its model calls, tool
    calls and jobs; prefork children included). Unset: workers export nothing."""
    worker_host: str = "0.0.0.0"
    """Address the worker's ``/metrics`` listens on."""


@dataclass(frozen=True)
class JobLabels:
    strategy: str
    tenant: str | None


_job: ContextVar[JobLabels | None] = ContextVar("ponder_metrics_job", default=None)


class ProcessMetrics:
    """This process's counters and histograms, in a registry of their own.

    Example:
        >>> m = ProcessMetrics(MetricsSettings(tenant_label=True))
        >>> m.model_call("small", "qwen", hit=False, recorded=True, error=None)
    """

    def __init__(self, settings: MetricsSettings | None = None) -> None:
        self.settings = settings or MetricsSettings()
        self.registry = CollectorRegistry(auto_describe=True)
        self._tenants: set[str] = set()
        self._lock = threading.Lock()
        extra = ["tenant"] if self.settings.tenant_label else []
        r = self.registry
        self.model_calls = Counter(
            "ponder_model_calls",
            "Model calls by outcome: live (ok, error, timeout, cancelled) and journal "
            "(journal_hit; journal_miss in a strict replay).",
            ["role", "model", "outcome", *extra],
            registry=r,
        )
        self.model_retries = Counter(
            "ponder_model_call_retries",
            "Failed attempts of model calls that the pool retried (on the same or another "
            "endpoint).",
            ["role", "model", *extra],
            registry=r,
        )
        self.tool_calls = Counter(
            "ponder_tool_calls",
            "Tool calls by outcome (error: the tool ran and reported a failure, or could "
            "not be reached).",
            ["tool", "outcome", *extra],
            registry=r,
        )
        self.job_seconds = Histogram(
            "ponder_job_duration_seconds",
            "Wall time of the run that finished a job, by final status.",
            ["strategy", "outcome", *extra],
            buckets=JOB_SECONDS_BUCKETS,
            registry=r,
        )
        self.job_tokens = Histogram(
            "ponder_job_tokens",
            "Tokens of a finished job (prompt + completion, journal hits included).",
            ["strategy", *extra],
            buckets=JOB_TOKENS_BUCKETS,
            registry=r,
        )
        self.job_cost = Counter(
            "ponder_job_cost_usd",
            "Cost of finished jobs at the pools' prices (a job with an unpriced pool "
            "adds nothing).",
            ["strategy", *extra],
            registry=r,
        )

    def _tenant(self, tenant: str | None) -> list[str]:
        if not self.settings.tenant_label:
            return []
        name = tenant or ""
        with self._lock:
            if name in self._tenants:
                return [name]
            if len(self._tenants) < self.settings.tenant_limit:
                self._tenants.add(name)
                return [name]
        return [OTHER_TENANT]

    def _current_tenant(self) -> list[str]:
        job = _job.get()
        return self._tenant(job.tenant if job else None)

    # -- model and tool calls ---------------------------------------------------------

    def model_call(
        self,
        role: str,
        model: str,
        *,
        hit: bool,
        recorded: bool,
        error: BaseException | None,
    ) -> None:
        """One model call ended. ``hit``: answered from the journal; ``recorded``: a live
        call was journaled (a stream its consumer then left by an exception still is)."""
        tenant = self._current_tenant()
        outcome = _call_outcome(hit, recorded, error)
        self.model_calls.labels(role, model, outcome, *tenant).inc()
        retried = self.model_retries.labels(role, model, *tenant)
        if error is not None and not recorded and not hit:
            details = getattr(error, "details", None)
            attempts = details.get("attempts") if isinstance(details, Mapping) else None
            # The last failed attempt ended the call: it was not retried.
            retried.inc(max(0, _failed(attempts or []) - 1))
        else:
            retried.inc(0)  # the series exists from the first call, so rate() works

    def model_retries_of(self, role: str, model: str, attempts: Sequence[Any]) -> None:
        """A live call succeeded after ``attempts``: each failed one was retried."""
        self.model_retries.labels(role, model, *self._current_tenant()).inc(_failed(attempts))

    def tool_call(self, tool: str, *, hit: bool, ok: bool, error: BaseException | None) -> None:
        if isinstance(error, BudgetExhausted):
            return  # refused before it ran: not a tool call
        if hit:
            outcome = "journal_hit"
        elif isinstance(error, JournalMiss):
            outcome = "journal_miss"
        elif isinstance(error, asyncio.CancelledError | GeneratorExit):
            outcome = "cancelled"
        else:
            outcome = "ok" if error is None and ok else "error"
        self.tool_calls.labels(tool, outcome, *self._current_tenant()).inc()

    # -- jobs ------------------------------------------------------------------------

    def job_started(self, spec: Mapping[str, Any], tenant: str | None) -> None:
        """Label what the job's run does from here on (its calls inherit the context)."""
        _job.set(JobLabels(str(spec.get("kind") or "unknown"), tenant))

    def job_finished(
        self, status: str, usage: Mapping[str, Any] | None, wall_s: float, *, saved: bool = True
    ) -> None:
        """The run saved the job's final ``status``; ``saved`` False: it lost the job's
        lease, and the worker holding it now counts the job."""
        job = _job.get()
        if job is None or not saved:
            return
        tenant = self._tenant(job.tenant)
        self.job_seconds.labels(job.strategy, status, *tenant).observe(wall_s)
        usage = usage or {}
        tokens = int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0)
        self.job_tokens.labels(job.strategy, *tenant).observe(tokens)
        cost = usage.get("cost")
        self.job_cost.labels(job.strategy, *tenant).inc(float(cost) if cost else 0.0)


def _call_outcome(hit: bool, recorded: bool, error: BaseException | None) -> str:
    if hit:
        return "journal_hit"
    if isinstance(error, ModelTimeout) or (
        isinstance(error, BudgetExhausted) and error.what == "seconds"
    ):
        return "timeout"  # the pool's deadline, or a stream the deadline cut (journaled)
    if recorded:
        return "ok"
    if error is None:
        return "ok"
    if isinstance(error, JournalMiss):
        return "journal_miss"
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return "cancelled"
    return "error"


def _failed(attempts: Sequence[Any]) -> int:
    """Attempts that failed on their own (not cancelled with their call, nor cut by its
    deadline): ``Attempt`` objects or their dumps."""
    n = 0
    for attempt in attempts:
        error = attempt.get("error") if isinstance(attempt, Mapping) else attempt.error
        if error and error not in ("cancelled", "deadline"):
            n += 1
    return n


_current: ProcessMetrics | None = None
_current_lock = threading.Lock()


def current() -> ProcessMetrics:
    """This process's metrics, made on first use from ``PONDER_METRICS_*``.

    A bad value there falls back to the defaults with an error in the log: counting must
    never fail a job (``ponder worker`` refuses to start with it, ``workers.metrics``)."""
    global _current
    if _current is None:
        with _current_lock:
            if _current is None:
                try:
                    settings = MetricsSettings()
                except ValidationError as exc:
                    log.error("bad PONDER_METRICS_* settings, using the defaults: %s", exc)
                    settings = MetricsSettings.model_construct()
                _current = ProcessMetrics(settings)
    return _current


def configure(settings: MetricsSettings | None) -> ProcessMetrics:
    """Start counting afresh under ``settings`` (tests; None: from the environment)."""
    global _current
    with _current_lock:
        _current = ProcessMetrics(settings)
    return _current


# The hooks' one-line entry points.


def model_call(
    role: str, model: str, *, hit: bool, recorded: bool, error: BaseException | None
) -> None:
    current().model_call(role, model, hit=hit, recorded=recorded, error=error)


def model_retries(role: str, model: str, attempts: Sequence[Any]) -> None:
    current().model_retries_of(role, model, attempts)


def tool_call(tool: str, *, hit: bool, ok: bool, error: BaseException | None) -> None:
    current().tool_call(tool, hit=hit, ok=ok, error=error)


def job_started(spec: Mapping[str, Any], tenant: str | None) -> None:
    current().job_started(spec, tenant)


def job_finished(
    status: str, usage: Mapping[str, Any] | None, wall_s: float, *, saved: bool = True
) -> None:
    current().job_finished(status, usage, wall_s, saved=saved)
