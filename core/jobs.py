"""Creating jobs and replays: validation first, then one transaction. Shared by CLI and API.

Nothing is written unless every input validated, so bad input never leaves a
half-written job behind.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.budget import BudgetSpec
from core.db import repo
from core.errors import InvalidInput, NotFound
from core.pools.client import PoolClient
from core.presets import resolve_strategy
from core.runner import resolve_roles, validate_spec

MAX_QUESTION_CHARS = 100_000
PRIORITIES = ("high", "default", "low")
"""Queue classes, most urgent first; ``workers.celery_app`` maps each to a queue."""


def validate_question(question: str) -> str:
    if not isinstance(question, str) or not question.strip():
        raise InvalidInput("question must be a non-empty string", field="question")
    if len(question) > MAX_QUESTION_CHARS:
        raise InvalidInput(
            f"question is {len(question)} characters; the limit is {MAX_QUESTION_CHARS}",
            field="question",
        )
    return question.strip()


def validate_priority(priority: str) -> str:
    if priority not in PRIORITIES:
        raise InvalidInput(
            f"priority must be one of {', '.join(PRIORITIES)}, not {priority!r}",
            field="priority",
            valid=list(PRIORITIES),
        )
    return priority


def validate_budget(budget: Mapping[str, Any] | None) -> BudgetSpec:
    try:
        return BudgetSpec.model_validate(dict(budget or {}))
    except ValidationError as exc:
        first = exc.errors()[0]
        field = "budget." + ".".join(str(p) for p in first["loc"])
        raise InvalidInput(f"{field}: {first['msg']}", field=field) from None


async def submit_job(
    sessions: async_sessionmaker[AsyncSession],
    pools: Mapping[str, PoolClient],
    *,
    question: str,
    strategy: dict[str, Any],
    budget: Mapping[str, Any] | None = None,
    roles: Mapping[str, str] | None = None,
    seed: int | None = None,
    tenant: str = "default",
    idempotency_key: str | None = None,
    priority: str = "default",
) -> str:
    """Validate and write one queued job; returns its id. Commits.

    Enqueueing is the caller's next step, after this returns (``workers.enqueue``): a
    worker must never receive the id of a row it cannot see yet. ``priority`` is stored
    so that the reaper re-enqueues the job on the same queue.
    """
    question = validate_question(question)
    params = validate_spec(await resolve_strategy(sessions, tenant, strategy))
    budget_spec = validate_budget(budget)
    priority = validate_priority(priority)
    bound = resolve_roles(params, pools, roles)
    async with sessions() as session, session.begin():
        job = await repo.create_job(
            session,
            question=question,
            strategy=params.model_dump(mode="json"),
            budget=budget_spec.model_dump(mode="json", exclude_defaults=True),
            roles=bound,
            seed=seed if seed is not None else random.SystemRandom().randrange(2**31),
            tenant=tenant,
            idempotency_key=idempotency_key,
        )
        if priority != "default":  # the column's default otherwise: no extra UPDATE
            job.priority = priority
        return job.id


async def resolve_job_id(sessions: async_sessionmaker[AsyncSession], prefix: str) -> str:
    """Accept a unique prefix of a job id, as git does for commits."""
    async with sessions() as session:
        matches = await repo.find_job_by_prefix(session, prefix)
    if not matches:
        raise NotFound(f"no job with id {prefix!r}")
    if len(matches) > 1:
        raise InvalidInput(f"job id prefix {prefix!r} is ambiguous", field="job_id")
    return matches[0].id


async def create_replay(
    sessions: async_sessionmaker[AsyncSession],
    pools: Mapping[str, PoolClient],
    parent_id: str,
    *,
    mode: Literal["strict", "live"] = "strict",
    fork_from: int | None = None,
    strategy_overrides: Mapping[str, Any] | None = None,
    roles: Mapping[str, str] | None = None,
) -> str:
    """A child job seeded with the parent's journal (its first ``fork_from`` entries).

    ``strict`` reproduces the parent with zero model calls or fails on the first call
    that is not in the journal; ``live`` calls the model for anything new.
    """
    async with sessions() as session, session.begin():
        parent = await repo.get_job(session, parent_id)
        if parent is None:
            raise NotFound(f"job {parent_id} not found")
        overrides = dict(strategy_overrides or {})
        if overrides.get("kind", parent.strategy.get("kind")) != parent.strategy.get("kind"):
            spec = overrides  # another strategy: the parent's params mean nothing to it
        else:
            spec = {**parent.strategy, **overrides}
        params = validate_spec(spec)
        if fork_from is not None:
            total = await repo.count_calls(session, parent_id)
            if not 0 <= fork_from <= total:
                raise InvalidInput(
                    f"fork_from must be between 0 and {total} (the parent's journal length)",
                    field="fork_from",
                )
        bound = dict(parent.roles)
        if roles:
            if mode == "strict":
                raise InvalidInput("role overrides need live mode", field="roles")
            bound.update(resolve_roles(params, pools, roles))
        if mode == "live":
            missing = [r for r in bound if bound[r]["pool"] not in pools]
            if missing:
                raise InvalidInput(f"live replay needs pools for roles {missing}", field="roles")
        child = await repo.create_job(
            session,
            question=parent.question,
            strategy=params.model_dump(mode="json"),
            budget=parent.budget,
            roles=bound,
            seed=parent.seed,
            tenant=parent.tenant,
            parent_job_id=parent.id,
            fork_point=fork_from,
            replay_mode=mode,
        )
        await repo.copy_journal(
            session, source_job_id=parent.id, target_job_id=child.id, limit=fork_from
        )
        return child.id
