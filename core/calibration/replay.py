"""Replays over a problem's pooled journal: every model call that any journaled job on
the problem made, offered to a new spec.

A call's journal key is its role, model and exact request (``core.journal``), so a call
recorded by one job answers the identical call of another: a glimp_router run at one tau
and another at a different tau share every glimpse and every step up to where their
routes part, and the children of a difficulty_router issue the same calls as top-level
jobs of the same specs with the same seed (an eval gives problem *i* seed S + *i* under
every strategy). Pooling the journals of every job on a problem therefore answers far
more re-routings than any single job's journal.

Each replay is an ordinary child job (parent: the problem's first source job) seeded
with the pooled entries: ``strict`` fails on the first call that none of them holds, and
so proves that a covered replay made zero model calls; ``live`` calls the model for
those misses and counts them. ``ponder trace <id>`` opens any of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from core.db import repo
from core.db.models import Job, JobStatus, ModelCall
from core.errors import InvalidInput
from core.runtime import Runtime
from core.specs import resolve_roles, validate_spec
from strategies.registry import roles_used
from strategies.shared.answers import answers_equal


@dataclass(frozen=True)
class ProblemJobs:
    """One problem of a calibration set and the journaled jobs that answered it."""

    id: str
    expected: str
    job_ids: tuple[str, ...]


@dataclass
class Source:
    """A problem with its pooled journal, loaded once and replayed many times."""

    id: str
    expected: str
    question: str
    seed: int
    parent_id: str
    roles: dict[str, dict[str, str]]
    entries: list[dict[str, Any]]
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """Every decision event of the source jobs (``route``, ``probe``, ...)."""
    kinds: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Replayed:
    """One spec replayed on one problem."""

    problem_id: str
    job_id: str
    covered: bool
    """The replay finished: in strict mode, every call it made was in the journal."""
    answer: str | None
    correct: bool
    completion_tokens: int
    tokens: dict[str, int]
    """Completion tokens by role."""
    details: dict[str, Any]
    live_calls: int
    error: str | None = None


_ENTRY_FIELDS = (
    "key",
    "occurrence",
    "role",
    "request",
    "response",
    "endpoint",
    "latency_ms",
    "attempts",
    "prompt_tokens",
    "completion_tokens",
    "cost",
)


async def load_sources(
    rt: Runtime, problems: Sequence[ProblemJobs], *, kind: str, source_field: str
) -> tuple[list[Source], list[str]]:
    """Load each problem's jobs, pooled journal and events; returns the problems with at
    least one journaled job, and the ids of those without.

    Raises:
        InvalidInput: no problem has a journaled job (``field`` = ``source_field``).
    """
    sources: list[Source] = []
    skipped: list[str] = []
    async with rt.sessions() as session:
        for problem in problems:
            jobs = [j for j in [await repo.get_job(session, i) for i in problem.job_ids] if j]
            entries: dict[tuple[str, int], dict[str, Any]] = {}
            events: list[tuple[str, dict[str, Any]]] = []
            for job in jobs:
                for call in await repo.list_calls(session, job.id):
                    row = {name: getattr(call, name) for name in _ENTRY_FIELDS}
                    row["source_job_id"] = call.source_job_id or job.id
                    entries.setdefault((call.key, call.occurrence), row)
                for span in await repo.list_spans(session, job.id):
                    if span.kind == "event":
                        events.append((span.name, dict(span.attributes or {})))
            if not jobs or not entries:
                skipped.append(problem.id)
                continue
            # The seed of a job of the calibrated kind: its own calls were keyed by it.
            first = next((j for j in jobs if j.strategy.get("kind") == kind), jobs[0])
            roles: dict[str, dict[str, str]] = {}
            for job in jobs:
                for role, binding in job.roles.items():
                    roles.setdefault(role, dict(binding))
            sources.append(
                Source(
                    id=problem.id,
                    expected=problem.expected,
                    question=first.question,
                    seed=first.seed,
                    parent_id=first.id,
                    roles=roles,
                    entries=list(entries.values()),
                    events=events,
                    kinds={str(j.strategy.get("kind")) for j in jobs},
                )
            )
    if not sources:
        raise InvalidInput(
            f"{source_field}: none of its {len(problems)} problems has a journaled job "
            "(run them first, e.g. with `ponder eval`)",
            field=source_field,
        )
    return sources, skipped


async def replay(
    rt: Runtime, source: Source, spec: Mapping[str, Any], *, live: bool, tenant: str
) -> Replayed:
    """Run ``spec`` on ``source``'s problem over its pooled journal (see module doc)."""
    params = validate_spec(dict(spec))
    roles: dict[str, dict[str, str]] = {}
    for role in sorted(roles_used(params)):
        if role in source.roles:
            roles[role] = source.roles[role]
        elif live:
            roles.update(resolve_roles(params, rt.pools, {role: role}))
        else:
            # No job bound this role, so none of its calls can be journaled: the strict
            # replay misses on its first call to it, which is the honest answer.
            roles[role] = {"pool": role, "model": ""}
    async with rt.sessions() as session, session.begin():
        job = await repo.create_job(
            session,
            question=source.question,
            strategy=params.model_dump(mode="json"),
            budget={},
            roles=roles,
            seed=source.seed,
            tenant=tenant,
            parent_job_id=source.parent_id,
            replay_mode="live" if live else "strict",
        )
        for seq, entry in enumerate(source.entries, start=1):
            session.add(ModelCall(job_id=job.id, seq=seq, **entry))
        job_id = job.id
    outcome = await rt.runner.run(job_id)
    usage = outcome.usage or {}
    result = outcome.result or {}
    covered = outcome.status == JobStatus.SUCCEEDED
    answer = result.get("answer") if covered else None
    return Replayed(
        problem_id=source.id,
        job_id=job_id,
        covered=covered,
        answer=answer,
        correct=answer is not None and answers_equal(answer, source.expected),
        completion_tokens=int(usage.get("completion_tokens", 0)),
        tokens={
            role: int(u.get("completion_tokens", 0))
            for role, u in (usage.get("by_role") or {}).items()
        },
        details=dict(result.get("details") or {}),
        # A strict replay's journal misses are failures, not calls: no model was asked.
        live_calls=outcome.live_calls if live else 0,
        error=None if covered else str((outcome.error or {}).get("message", outcome.status)),
    )


async def jobs_by_question(
    rt: Runtime, tenant: str, questions: Iterable[str]
) -> dict[str, list[Job]]:
    """The tenant's succeeded jobs on each question, oldest first (dataset mode).

    Replays (calibration's own included) are left out: their calls are their parents'.
    """
    wanted = {q.strip() for q in questions}
    found: dict[str, list[Job]] = {q: [] for q in wanted}
    async with rt.sessions() as session:
        query = (
            select(Job)
            .where(Job.tenant == tenant, Job.status == JobStatus.SUCCEEDED)
            .where(Job.question.in_(wanted), Job.parent_job_id.is_(None))
            .order_by(Job.created_at, Job.id)
        )
        for job in (await session.execute(query)).scalars():
            found[job.question].append(job)
    return found
