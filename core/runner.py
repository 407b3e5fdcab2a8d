"""The job runner: load a job, run its strategy through a journaled context, save the result.

``run`` is idempotent per job: a finished job is returned as is; a job left ``running``
or ``queued`` by a crash is run again from the top, and its journal answers every call
it had already paid for. The CLI runs this in-process; Celery workers call the same
function.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.budget import BudgetSpec, JobBudget
from core.context import JobContext, RoleModel
from core.db import repo
from core.db.models import JobStatus
from core.errors import InvalidInput, NotFound, PonderError
from core.journal import Journal
from core.pools.client import PoolClient
from core.trace import SpanListener, TraceWriter, Tracer
from strategies.protocol import BudgetExhausted, StrategyResult
from strategies.registry import STRATEGIES, SpecError, parse_spec, roles_used

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


def validate_spec(spec: dict[str, Any]) -> BaseModel:
    """Parse a strategy spec, turning a spec error into the API's ``InvalidInput``."""
    try:
        return parse_spec(spec)
    except SpecError as exc:
        raise InvalidInput(exc.message, field=exc.field, valid=exc.valid) from None


def resolve_roles(
    params: BaseModel, pools: Mapping[str, PoolClient], overrides: Mapping[str, str] | None = None
) -> dict[str, dict[str, str]]:
    """Bind each role the spec uses to a configured pool: ``{role: {pool, model}}``.

    Overrides map a strategy role to another *configured* pool name — never a URL.
    The model name is stored with the job so that strict replay needs no pool at all.
    """
    overrides = dict(overrides or {})
    bound: dict[str, dict[str, str]] = {}
    for role in sorted(roles_used(params) | set(overrides)):
        pool_name = overrides.get(role, role)
        if pool_name not in pools:
            configured = ", ".join(sorted(pools)) or "none"
            raise InvalidInput(
                f"role '{role}' needs pool '{pool_name}', which is not configured "
                f"(configured: {configured})",
                field=f"roles.{role}",
            )
        bound[role] = {"pool": pool_name, "model": pools[pool_name].settings.model}
    return bound


async def run_strategy(params: BaseModel, problem: str, ctx: JobContext) -> StrategyResult:
    kind = str(getattr(params, "kind"))
    async with ctx.tracer.span("strategy", kind, params=params.model_dump(mode="json")) as span:
        result = await STRATEGIES[kind].run(problem, ctx, params)
        span.attributes = {
            **span.attributes,
            "answer": result.answer,
            "budget_exhausted": result.budget_exhausted,
        }
        return result


class Runner:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        pools: Mapping[str, PoolClient],
        engine: Engine,
    ) -> None:
        """``engine``: a synchronous engine on the same database, for trace writes."""
        self.sessions = sessions
        self.pools = pools
        self.engine = engine

    async def run(self, job_id: str, listeners: list[SpanListener] | None = None) -> RunOutcome:
        started = time.monotonic()
        async with self.sessions() as session, session.begin():
            job = await repo.get_job(session, job_id)
            if job is None:
                raise NotFound(f"job {job_id} not found")
            if job.status in (JobStatus.SUCCEEDED, JobStatus.CANCELLED):
                return RunOutcome(job.id, job.status, job.result, job.usage, job.error)
            await repo.mark_running(session, job)
            await repo.delete_spans(session, job.id)
            entries = list(await repo.list_calls(session, job.id))
            question, spec, budget_spec = job.question, job.strategy, job.budget
            roles, seed, mode = job.roles, job.seed, job.replay_mode or "live"

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
                price_in_per_1k=settings.price_input_per_1k if settings else 0.0,
                price_out_per_1k=settings.price_output_per_1k if settings else 0.0,
            )
        ctx = JobContext(
            models=models, budget=budget, tracer=tracer, seed=seed, run_child=run_strategy
        )
        status, result, error = JobStatus.FAILED, None, None
        try:
            params = validate_spec(spec)
            async with tracer.span("job", "job", question=question[:200], mode=mode):
                outcome = await run_strategy(params, question, ctx)
            result = outcome.model_dump(mode="json")
            status = JobStatus.SUCCEEDED
        except BudgetExhausted as exc:
            # A strategy that does not catch exhaustion still ends cleanly: no answer.
            result = StrategyResult(answer=None, budget_exhausted=True).model_dump(mode="json")
            result["details"] = {"exhausted": exc.what}
            status = JobStatus.SUCCEEDED
        except PonderError as exc:
            error = exc.to_dict()
        except asyncio.CancelledError:
            status, error = JobStatus.CANCELLED, {"code": "cancelled", "message": "cancelled"}
            raise
        except Exception as exc:  # a bug: keep the job's record honest, then surface it
            log.exception("job %s failed", job_id)
            error = {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}
        finally:
            try:
                await writer.close()
            finally:
                usage = usage_summary(budget, journal, time.monotonic() - started)
                if result is not None and budget.was_exhausted:
                    result["budget_exhausted"] = True
                async with self.sessions() as session, session.begin():
                    job = await repo.get_job(session, job_id)
                    assert job is not None
                    await repo.finish_job(
                        session, job, status=status, result=result, usage=usage, error=error
                    )
        return RunOutcome(
            job_id,
            status,
            result,
            usage,
            error,
            live_calls=journal.misses,
            replayed_calls=journal.hits,
            wall_s=time.monotonic() - started,
        )


def usage_summary(budget: JobBudget, journal: Journal, wall_s: float) -> dict[str, Any]:
    return {
        "calls": budget.spent.calls,
        "prompt_tokens": budget.spent.prompt_tokens,
        "completion_tokens": budget.spent.completion_tokens,
        "cost": round(budget.spent.cost, 8),
        "live_calls": journal.misses,
        "journal_hits": journal.hits,
        "wall_s": round(wall_s, 3),
        "by_role": {
            role: {
                "calls": s.calls,
                "prompt_tokens": s.prompt_tokens,
                "completion_tokens": s.completion_tokens,
                "cost": round(s.cost, 8),
            }
            for role, s in sorted(budget.by_role.items())
        },
    }
