"""The job runner: load a job, run its strategy through a journaled context, save the result.

``run`` is idempotent per job: a finished job is returned as is; a job left ``running``
or ``queued`` by a crash is run again from the top, and its journal answers every call
it had already paid for. The CLI runs this in-process; Celery workers call the same
function with a ``core.cancel.JobMonitor``, which adds the job's lease, heartbeats,
cancellation and a time limit.

Transactions on the worker, per job: one to claim and start it (with its journal loaded);
one per batch of journal rows, committed in the background as the job starts its next
model call or tool run (the spans submitted so far ride on it: ``core.trace``); and one
that saves the outcome with the rest of the trace and the journal rows not yet committed.
A fresh `direct` job makes two (a resumed one a third, deleting its first run's spans).
Two is the floor: the claim
must commit before the call is paid (it is the lease), and the outcome after the strategy
has used the answer; merging them would hold a transaction open across the model call,
locking the job row against heartbeats, cancel requests and (on SQLite) every other
writer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy.exc
from pydantic import BaseModel
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core import metrics
from core.budget import BudgetSpec, JobBudget, Spent
from core.cancel import JobMonitor, JobStopped, holder_is_dead
from core.context import JobContext
from core.db import control, repo, runs
from core.db.control import CANCELLED_ERROR
from core.db.models import Job, JobStatus
from core.db.runs import ClaimedJob
from core.errors import InvalidInput, NotFound, PonderError, PoolUnavailable
from core.journal import Journal
from core.pools.client import PoolClient
from core.role_model import RoleModel
from core.specs import validate_spec
from core.tools.backends import ToolBackend, ToolBackends
from core.tools.journaled import JournaledTool
from core.trace import SpanListener, Tracer, TraceRows, TraceWriter
from strategies.protocol import BudgetExhausted, Conversation, StrategyResult
from strategies.registry import STRATEGIES, tools_used

log = logging.getLogger(__name__)


@dataclass
class RunOutcome:
    job_id: str
    status: str
    result: dict[str, Any] | None
    usage: dict[str, Any] | None
    error: dict[str, Any] | None
    live_calls: int = 0
    replayed_calls: int = 0
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def own_params(params: BaseModel) -> dict[str, Any]:
    """A strategy span's params: its own, with each child spec cut to ``{"kind": ...}``.

    The child's own span records the rest. Storing whole subtrees at every level made a
    trace grow with the square of the nesting depth (a 9 KB request, 5.8 MB of spans).
    """
    dumped: dict[str, Any] = params.model_dump(mode="json")
    for name, value in params:
        if _is_spec(value):
            dumped[name] = {"kind": getattr(value, "kind")}  # noqa: B009
        elif isinstance(value, list | tuple) and any(_is_spec(v) for v in value):
            dumped[name] = [{"kind": getattr(v, "kind")} if _is_spec(v) else d  # noqa: B009
                            for v, d in zip(value, dumped[name], strict=True)]  # fmt: skip
    return dumped


def _is_spec(value: object) -> bool:
    return isinstance(value, BaseModel) and isinstance(getattr(value, "kind", None), str)


async def run_strategy(params: BaseModel, problem: str, ctx: JobContext) -> StrategyResult:
    kind = str(getattr(params, "kind"))  # noqa: B009 - BaseModel itself declares no kind
    async with ctx.tracer.span("strategy", kind, params=own_params(params)) as span:
        result = await STRATEGIES[kind].run(problem, ctx, params)
        span.attributes = {
            **span.attributes,
            "answer": result.answer,
            "budget_exhausted": result.budget_exhausted,
        }
        return result


@dataclass(frozen=True)
class ReleasedLease:
    """A lease whose run ended on an infrastructure failure: its holder and the job's
    ``attempts`` then. If both still match, nobody has claimed the job since, and the
    lease may be taken over without waiting for its heartbeat to go stale."""

    worker: str
    attempts: int


class InfrastructureFailure(Exception):
    """The database (or the network under it) failed under a running job; ``cause`` is
    the original error, ``released`` the lease the run leaves behind (None without a
    monitor)."""

    def __init__(self, cause: BaseException, released: ReleasedLease | None) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause
        self.released = released


class Runner:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        pools: Mapping[str, PoolClient],
        engine: Engine,
        tools: Mapping[str, ToolBackend] | None = None,
    ) -> None:
        """``engine``: a synchronous engine on the same database, for trace writes.
        ``tools``: the configured tools by name (default: the built-in ``python``)."""
        self.sessions = sessions
        self.pools = pools
        self.engine = engine
        self.tools: Mapping[str, ToolBackend] = (
            tools if tools is not None else ToolBackends.default()
        )

    async def run(
        self,
        job_id: str,
        listeners: list[SpanListener] | None = None,
        *,
        monitor: JobMonitor | None = None,
        released: ReleasedLease | None = None,
    ) -> RunOutcome:
        """Run a job to a final state and save it.

        Args:
            job_id: the job.
            listeners: progress callbacks (the CLI's live display).
            monitor: given by workers. The run then first takes the job's lease and skips
                a job that is finished, was cancelled before it started, or is held by a
                live worker (``RunOutcome.extra["skipped"]`` says why); cancel requests,
                the time limit and a lost lease stop the strategy; the outcome is saved
                only while this worker still holds the lease; and a database failure is
                raised for the task to retry rather than recorded as the job's failure.
                Without it (the CLI), any unfinished job runs.
            released: the lease an earlier run of this job left behind when the
                database failed under it (``InfrastructureFailure.released``): taken over
                at once if nobody claimed the job since, instead of waiting for it to go
                stale.
        """
        started = time.monotonic()
        job = await self._begin(job_id, monitor, released)
        if isinstance(job, RunOutcome):
            return job
        lease = ReleasedLease(str(job.worker), job.attempts) if monitor else None
        entries = job.entries
        spec, budget_spec = job.strategy, job.budget
        conversation = (
            Conversation.model_validate(job.conversation)
            if job.conversation
            else Conversation.of_question(job.question)
        )
        roles, seed, mode = job.roles, job.seed, job.replay_mode or "live"
        metrics.job_started(spec, job.tenant)

        try:
            writer = TraceWriter(self.engine)
            writer.start()
            tracer = Tracer(job_id, writer)
            tracer.listeners.extend(listeners or [])
            journal = Journal(job_id, entries, mode="strict" if mode == "strict" else "live")
            budget = JobBudget(BudgetSpec.model_validate(budget_spec))
            models: dict[str, RoleModel] = {}
            for role, binding in roles.items():
                pool = None if mode == "strict" else self.pools.get(binding["pool"])
                settings = pool.settings if pool is not None else None
                models[role] = RoleModel(
                    role,
                    pool,
                    binding["model"],
                    journal=journal,
                    budget=budget,
                    tracer=tracer,
                    price_in_per_1k=settings.price_input_per_1k if settings else None,
                    price_out_per_1k=settings.price_output_per_1k if settings else None,
                )
            ctx = JobContext(
                models=models,
                budget=budget,
                tracer=tracer,
                seed=seed,
                run_child=run_strategy,
                conversation=conversation,
            )
            status, result, error = JobStatus.FAILED, None, None
            save, lease_lost = True, False
            try:
                params = validate_spec(spec)
                ctx.tools = await self._bind_tools(params, journal, budget, tracer, mode)
                if monitor is not None and mode != "strict":
                    self._check_pools(roles)
                task = asyncio.create_task(_run_job_span(params, conversation.problem(), ctx, mode))
                outcome = await _wait(task, job_id, monitor, budget.spec.max_seconds)
                result = outcome.model_dump(mode="json")
                status = JobStatus.SUCCEEDED
            except BudgetExhausted as exc:
                # A strategy that does not catch exhaustion still ends cleanly: no answer.
                result = StrategyResult(answer=None, budget_exhausted=True).model_dump(mode="json")
                result["details"] = {"exhausted": exc.what}
                status = JobStatus.SUCCEEDED
            except JobStopped as exc:
                if exc.reason == "cancelled":
                    status, error = JobStatus.CANCELLED, dict(CANCELLED_ERROR)
                elif exc.reason == "time_limit":
                    error = {"code": "time_limit", "message": exc.detail}
                else:  # lease_lost: the worker that holds the job now will save it
                    save, lease_lost = False, True
            except PonderError as exc:
                error = exc.to_dict()
            except asyncio.CancelledError:
                status, error = JobStatus.CANCELLED, {"code": "cancelled", "message": "cancelled"}
                raise
            except Exception as exc:  # a bug: keep the job's record honest, then surface it
                if monitor is not None and is_infrastructure_error(exc):
                    # Not the job's fault: leave it running under this lease; the task retries
                    # (or the reaper re-enqueues it) and the journal pays for nothing twice.
                    # The retry may take this lease over at once: it names it.
                    save = False
                    raise InfrastructureFailure(exc, lease) from exc
                log.exception("job %s failed", job_id)
                error = {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}
            finally:
                # The trace not yet committed (span closes, the last events) rides on the
                # transaction that saves the outcome rather than costing one of its own.
                trace = TraceRows()
                try:
                    trace = await writer.close(commit=False)
                except BaseException:
                    # A commit that failed in the background lost rows the outcome may
                    # be built on: save nothing; the task retries under this lease.
                    save = False
                    raise
                finally:
                    usage = usage_summary(budget, journal, time.monotonic() - started)
                    if result is not None and budget.was_exhausted:
                        result["budget_exhausted"] = True
                    if save:
                        lease_lost = not await self._save(
                            job_id,
                            monitor,
                            status=status,
                            result=result,
                            usage=usage,
                            error=error,
                            trace=trace,
                        )
            outcome_ = RunOutcome(
                job_id,
                status,
                result,
                usage,
                error,
                live_calls=journal.misses,
                replayed_calls=journal.hits,
                wall_s=time.monotonic() - started,
            )
            if lease_lost:
                outcome_.extra["lease_lost"] = True
            metrics.job_finished(status, usage, outcome_.wall_s, saved=save and not lease_lost)
            return outcome_
        except Exception as exc:
            # Whatever failed on the database after the claim (the trace writer, the
            # save, a journal write) leaves this run's lease behind: name it, so the
            # task's retry takes the job over at once instead of waiting for the lease
            # to go stale (stale_after_s, 30 s in production) after the outage ends.
            if (
                lease is not None
                and not isinstance(exc, InfrastructureFailure)
                and is_infrastructure_error(exc)
            ):
                raise InfrastructureFailure(exc, lease) from exc
            raise

    async def _begin(
        self, job_id: str, monitor: JobMonitor | None, released: ReleasedLease | None
    ) -> ClaimedJob | RunOutcome:
        """Claim the job (or, without a monitor, start it): the common case in one
        statement on the synchronous engine (``core.db.runs``); a released lease, a
        finished, cancelled or held job on the async session."""
        if released is None and not (monitor is not None and job_id in monitor.running):
            claimed = await asyncio.to_thread(
                runs.claim,
                self.engine,
                job_id,
                worker=monitor.worker if monitor else None,
                stale_before=monitor.stale_before() if monitor else None,
                max_attempts=monitor.max_attempts if monitor else None,
            )
            if claimed is not None:
                return claimed
        async with self.sessions() as session, session.begin():
            if monitor is None:
                job = await self._start(session, job_id)
            else:
                job = await self._claim(session, job_id, monitor, released)
            if isinstance(job, RunOutcome):
                return job
            await repo.delete_spans(session, job.id)
            return ClaimedJob.of(job, list(await repo.list_calls(session, job.id)))

    async def _start(self, session: AsyncSession, job_id: str) -> Job | RunOutcome:
        job = await repo.get_job(session, job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        if job.status in (JobStatus.SUCCEEDED, JobStatus.CANCELLED):
            return _as_outcome(job)
        await repo.mark_running(session, job)
        return job

    async def _claim(
        self,
        session: AsyncSession,
        job_id: str,
        monitor: JobMonitor,
        released: ReleasedLease | None = None,
    ) -> Job | RunOutcome:
        if job_id in monitor.running:
            # A duplicate delivery to the process that is running the job right now.
            return _as_outcome(None, job_id, skipped="already running in this process")
        if released is not None and await control.take_over_job(
            session,
            job_id,
            worker=monitor.worker,
            previous=released.worker,
            attempts=released.attempts,
        ):
            job = await repo.get_job(session, job_id)
            if job is None:
                raise NotFound(f"job {job_id} not found")
            return job
        claimed = await control.claim_job(
            session,
            job_id,
            worker=monitor.worker,
            stale_before=monitor.stale_before(),
            max_attempts=monitor.max_attempts,
        )
        job = await repo.get_job(session, job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        if claimed:
            return job
        if job.status in JobStatus.FINAL:
            return _as_outcome(job, skipped="finished")
        if job.status == JobStatus.QUEUED and job.cancel_requested_at is not None:
            # Flagged, but the canceller did not get to finish the job: do it now.
            await control.cancel_queued_job(session, job_id)
            await session.refresh(job)
            return _as_outcome(job, skipped="cancelled before it ran")
        if job.status == JobStatus.RUNNING and holder_is_dead(job.worker):
            # Its process is gone (a prefork child killed mid-job, its message requeued):
            # no need to wait for the heartbeat to go stale.
            if job.cancel_requested_at is not None or job.attempts >= monitor.max_attempts:
                cancelled = job.cancel_requested_at is not None
                if await control.end_stale_job(
                    session,
                    job_id,
                    worker=job.worker,
                    stale_before=None,
                    status=JobStatus.CANCELLED if cancelled else JobStatus.FAILED,
                    error=dict(CANCELLED_ERROR)
                    if cancelled
                    else control.worker_lost_error(job.attempts, job.worker),
                ):
                    await session.refresh(job)
                    return _as_outcome(job, skipped="its worker died; not run again")
            elif await control.take_over_job(
                session, job_id, worker=monitor.worker, previous=str(job.worker)
            ):
                await session.refresh(job)
                return job
        return _as_outcome(job, skipped=f"held by worker {job.worker}")

    async def _bind_tools(
        self, params: BaseModel, journal: Journal, budget: JobBudget, tracer: Tracer, mode: str
    ) -> dict[str, JournaledTool]:
        """The tools the spec names, journaled for this run. A strict replay binds no
        backend: it executes nothing, and a call missing from the journal fails it."""
        bound: dict[str, JournaledTool] = {}
        for name in sorted(tools_used(params)):
            configured = self.tools.get(name)
            if configured is None and not (mode == "strict" and journal.has_schema(name)):
                listed = ", ".join(sorted(self.tools)) or "none"
                raise InvalidInput(
                    f"tool {name!r} is not configured here (configured: {listed})",
                    field="strategy",
                )
            backend = None if mode == "strict" else configured
            description, parameters = await _tool_schema(name, backend, configured, journal, tracer)
            bound[name] = JournaledTool(
                name,
                backend,
                description=description,
                parameters=parameters,
                journal=journal,
                budget=budget,
                tracer=tracer,
            )
        return bound

    def _check_pools(self, roles: Mapping[str, Mapping[str, str]]) -> None:
        for role, binding in sorted(roles.items()):
            if self.pools.get(binding["pool"]) is None:
                configured = ", ".join(sorted(self.pools)) or "none"
                raise PoolUnavailable(
                    f"role '{role}' needs pool '{binding['pool']}', which this worker does "
                    f"not have (configured: {configured})",
                    field=f"roles.{role}",
                )

    async def _save(
        self,
        job_id: str,
        monitor: JobMonitor | None,
        *,
        status: str,
        result: dict[str, Any] | None,
        usage: dict[str, Any],
        error: dict[str, Any] | None,
        trace: TraceRows,
    ) -> bool:
        """Write the outcome and the rest of the trace in one transaction; False when a
        worker lost the lease and must write neither (the new holder traces its own run)."""
        owned = await asyncio.to_thread(
            runs.finish,
            self.engine,
            job_id,
            worker=monitor.worker if monitor else None,
            status=status,
            result=result,
            usage=usage,
            error=error,
            trace=trace,
        )
        if not owned:
            log.warning(
                "job %s: another worker took it over; this run's outcome is dropped", job_id
            )
        return owned


async def _run_job_span(
    params: BaseModel, question: str, ctx: JobContext, mode: str
) -> StrategyResult:
    async with ctx.tracer.span("job", "job", question=question[:200], mode=mode):
        return await run_strategy(params, question, ctx)


async def _wait(
    task: asyncio.Task[StrategyResult],
    job_id: str,
    monitor: JobMonitor | None,
    max_seconds: float | None,
) -> StrategyResult:
    """Await the strategy task; a stop from the monitor surfaces as ``JobStopped``.

    The strategy runs as its own task so that the monitor can cancel it alone: the
    runner survives to save the outcome. Cancelling the runner itself (Ctrl-C in the
    CLI) still cancels both, as before.
    """
    if monitor is None:
        return await task
    monitor.attach(job_id, task, max_seconds=max_seconds)
    try:
        return await task
    except asyncio.CancelledError:
        stopped = monitor.stopped(job_id)
        current = asyncio.current_task()
        if stopped is None or (current is not None and current.cancelling()):
            raise
        raise stopped from None
    finally:
        monitor.detach(job_id)


def _as_outcome(job: Job | None, job_id: str = "", *, skipped: str | None = None) -> RunOutcome:
    if job is None:
        outcome = RunOutcome(job_id, JobStatus.RUNNING, None, None, None)
    else:
        outcome = RunOutcome(job.id, job.status, job.result, job.usage, job.error)
    if skipped is not None:
        outcome.extra["skipped"] = skipped
    return outcome


def is_infrastructure_error(exc: BaseException) -> bool:
    """A failure of the database or the network under it, not of the job.

    Walks the cause chain: the trace writer re-raises its failure wrapped.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OperationalError | InterfaceError | DisconnectionError):
            return True
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, ConnectionError | sqlalchemy.exc.TimeoutError):
            return True
        current = current.__cause__ or current.__context__
    return False


async def _tool_schema(
    name: str,
    backend: ToolBackend | None,
    configured: ToolBackend | None,
    journal: Journal,
    tracer: Tracer,
) -> tuple[str, dict[str, Any]]:
    """What a model is shown of a tool. A server's tool (MCP) is described by the server:
    asked once per job (``prepare``) and journaled, so a replay, which asks no server,
    shows the model the same function and its calls keep their journal keys."""
    recorded = journal.schema(name)
    if recorded is not None:
        return recorded
    assert configured is not None  # _bind_tools checked
    prepare = getattr(backend, "prepare", None)
    if prepare is None:
        return configured.description, configured.parameters
    await prepare()
    entry = journal.new_schema_entry(name, configured.description, configured.parameters)
    done = tracer.writer.submit([entry], wait=True)
    assert done is not None
    await done
    return configured.description, configured.parameters


def usage_summary(budget: JobBudget, journal: Journal, wall_s: float) -> dict[str, Any]:
    summary = _model_usage(budget, journal, wall_s)
    if journal.tool_hits or journal.tool_misses:
        summary |= {
            "tool_calls": budget.tools.calls,
            "tool_seconds": round(budget.tools.seconds, 3),
            "tool_executions": journal.tool_misses,
            "tool_journal_hits": journal.tool_hits,
        }
    return summary


def _model_usage(budget: JobBudget, journal: Journal, wall_s: float) -> dict[str, Any]:
    return {
        "calls": budget.spent.calls,
        "prompt_tokens": budget.spent.prompt_tokens,
        "completion_tokens": budget.spent.completion_tokens,
        **_reasoning_and_cost(budget.spent),
        "live_calls": journal.misses,
        "journal_hits": journal.hits,
        "wall_s": round(wall_s, 3),
        "by_role": {
            role: {
                "calls": s.calls,
                "prompt_tokens": s.prompt_tokens,
                "completion_tokens": s.completion_tokens,
                **_reasoning_and_cost(s),
            }
            for role, s in sorted(budget.by_role.items())
        },
    }


def _reasoning_and_cost(spent: Spent) -> dict[str, Any]:
    """Reasoning tokens (a part of ``completion_tokens``) and the cost: ``None`` with
    ``cost_known`` false when any call ran on a pool without prices — a partial sum
    would read as the whole."""
    out: dict[str, Any] = {"reasoning_tokens": spent.reasoning_tokens}
    if spent.reasoning_tokens_estimated:
        out["reasoning_tokens_estimated"] = True
    out["cost"] = round(spent.cost, 8) if spent.cost_known else None
    out["cost_known"] = spent.cost_known
    return out
