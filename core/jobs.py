"""Creating jobs and replays: validation first, then one transaction.

``submit`` is the one way a new job is created: the REST API, the OpenAI-compatible
endpoint, the CLI and the eval harness all call it (the last two through
``submit_job``, which returns just the id); ``create_replay`` makes a child of an
existing job. Nothing is written unless every input validated, so bad input never
leaves a half-written job behind; errors name the field.

Around it each caller adds only what is its own: the API applies its tenant limits
through the ``limit_budget`` and ``admit`` hooks, and enqueues after ``submit`` returns
(the commit is done by then: a worker never receives the id of a row it cannot see).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.budget import BudgetSpec, parse_budget
from core.conversations import build_conversation, check_answer_kind
from core.db import repo
from core.db.models import Job
from core.errors import IdempotencyConflict, InvalidInput, NotFound
from core.journal import TOOL_ROLE_PREFIX
from core.pools.client import PoolClient
from core.presets import resolve_strategy
from core.specs import check_tools, resolve_roles, validate_spec
from strategies.protocol import Conversation, message_text

MAX_QUESTION_CHARS = 100_000
MAX_IDEMPOTENCY_KEY = 128
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


def validate_idempotency_key(key: str | None, field: str = "idempotency_key") -> str | None:
    """``field``: the caller's name for the key in errors (the API's header)."""
    if key is None:
        return None
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise InvalidInput(
            f"{field} must be 1-{MAX_IDEMPOTENCY_KEY} printable characters", field=field
        )
    return key


@dataclass(frozen=True)
class Submitted:
    job: Job
    created: bool
    """False: an earlier job with the same idempotency key and the same request."""
    concurrent: bool = False
    """That earlier job was written by a submission running at the same time, which
    enqueues it itself."""


async def submit(
    sessions: async_sessionmaker[AsyncSession],
    pools: Mapping[str, PoolClient],
    *,
    question: str | None = None,
    strategy: dict[str, Any],
    budget: Mapping[str, Any] | None = None,
    roles: Mapping[str, str] | None = None,
    seed: int | None = None,
    tenant: str = "default",
    idempotency_key: str | None = None,
    priority: str = "default",
    messages: Any = None,
    tools: Any = None,
    tool_choice: Any = None,
    response_format: Any = None,
    answer_kind: Any = None,
    stream: bool = False,
    tool_names: Collection[str] | None = None,
    limit_budget: Callable[[BudgetSpec], BudgetSpec] | None = None,
    admit: Callable[[AsyncSession], Awaitable[None]] | None = None,
    key_field: str = "idempotency_key",
    fresh_key: bool = False,
) -> Submitted:
    """Validate and write one queued job, in one transaction that has committed when
    this returns. Enqueueing is the caller's next step (``workers.enqueue``).

    Args:
        question: the problem as one text; or ``messages``, a whole conversation
            (OpenAI chat messages), with optional ``tools``, ``tool_choice`` and
            ``response_format``. ``answer_kind`` (number, json, tool_calls, text)
            defaults from those; the strategy must support it (``core.conversations``).
        stream: the caller reads the answer as it is generated (the OpenAI face's
            ``stream: true``); journaled as streamed calls, so replays match.
        strategy: a spec ``{"kind": ..., **params}`` or a tenant's preset with
            overrides ``{"preset": name, **params}``.
        budget: limits by ``BudgetSpec`` field; errors name ``budget.<field>``.
        roles: strategy role -> configured pool name.
        seed: the job's rng seed; None draws one.
        idempotency_key: with a key this tenant used before for the same request, the
            earlier job comes back (``created`` False); for another request,
            ``IdempotencyConflict``. Concurrent submissions with one key write one job.
        priority: the queue class, stored so that the reaper re-enqueues on it.
        limit_budget: maps the validated budget to the one to store (the API: the
            tenant's defaults and caps); it may raise ``InvalidInput``.
        admit: runs in the transaction that writes the job, before the insert (the
            API: the tenant's jobs-in-flight quota); it may raise to refuse the job.
        key_field: the caller's name for the key in errors (``Idempotency-Key``).
        fresh_key: the caller has just minted ``idempotency_key`` (random), so no earlier
            job can hold it: the lookup before the insert is skipped (a round trip and a
            transaction on every OpenAI-face request); the unique index still guards it.
        tool_names: the tools configured where the job will run; a spec naming another
            is refused (None: not checked here; the run refuses it).

    Example::

        submitted = await submit(sessions, pools, question="2+2?", strategy={"kind": "direct"})
        await asyncio.to_thread(enqueue_job, submitted.job.id)  # after the commit
    """
    key = validate_idempotency_key(idempotency_key, key_field)
    if question is not None or messages is None:
        question = validate_question(question or "")
    conversation = build_conversation(
        question=question,
        messages=messages,
        tools=tools,
        tool_choice=tool_choice,
        response_format=response_format,
        answer_kind=answer_kind,
        stream=stream,
    )
    if conversation is not None:
        question = _headline(conversation)
    assert question is not None
    conversation_json = conversation.model_dump(mode="json") if conversation else None
    params = validate_spec(await resolve_strategy(sessions, tenant, strategy))
    if tool_names is not None:
        check_tools(params, tool_names)
    check_answer_kind(
        str(params.model_dump()["kind"]), conversation.answer_kind if conversation else "number"
    )
    budget_spec = parse_budget(budget)
    if limit_budget is not None:
        budget_spec = limit_budget(budget_spec)
    priority = validate_priority(priority)
    bound = resolve_roles(params, pools, roles)
    _check_cost_limit(budget_spec, pools, bound)
    spec_json = params.model_dump(mode="json")
    budget_json = budget_spec.model_dump(mode="json", exclude_defaults=True)
    fingerprint: str | None = None
    if key is not None:
        # Of the request as validated: {"kind": "direct"} and "direct" are the same
        # request; an omitted seed is part of it (it means "pick one").
        fingerprint = _fingerprint(
            {
                "question": question,
                "conversation": conversation_json,
                "strategy": spec_json,
                "budget": budget_json,
                "roles": bound,
                "seed": seed,
                "priority": priority,
            }
        )
        if not fresh_key:
            earlier = await _earlier(sessions, tenant, key, fingerprint, key_field)
            if earlier is not None:
                return Submitted(earlier, created=False)
    try:
        async with sessions() as session, session.begin():
            if admit is not None:
                await admit(session)
            job = await repo.create_job(
                session,
                question=question,
                conversation=conversation_json,
                strategy=spec_json,
                budget=budget_json,
                roles=bound,
                seed=seed if seed is not None else random.SystemRandom().randrange(2**31),
                tenant=tenant,
                idempotency_key=key,
                request_hash=fingerprint,
                priority=priority,
            )
    except IntegrityError:
        if key is None or fingerprint is None:
            raise
        # A concurrent submission with the same key won the insert: answer as its retry.
        earlier = await _earlier(sessions, tenant, key, fingerprint, key_field)
        if earlier is None:
            raise
        return Submitted(earlier, created=False, concurrent=True)
    return Submitted(job, created=True)


def _check_cost_limit(
    budget: BudgetSpec, pools: Mapping[str, PoolClient], bound: Mapping[str, Mapping[str, str]]
) -> None:
    """A cost limit needs prices: on a pool without any, the job's cost is unknown and
    ``max_cost`` could never stop it (an operator sets 0 for a free model)."""
    if budget.max_cost is None:
        return
    unpriced = sorted({b["pool"] for b in bound.values() if not pools[b["pool"]].settings.priced})
    if unpriced:
        raise InvalidInput(
            f"budget.max_cost needs pool prices, and pool {unpriced[0]!r} has none "
            f"(set PONDER_POOLS__{unpriced[0].upper()}__PRICE_OUTPUT_PER_1K, 0 for a free model)",
            field="budget.max_cost",
        )


async def submit_job(
    sessions: async_sessionmaker[AsyncSession],
    pools: Mapping[str, PoolClient],
    **request: Any,
) -> str:
    """``submit`` for callers that need only the new job's id (the CLI, evals, tests)."""
    submitted = await submit(sessions, pools, **request)
    return submitted.job.id


def _headline(conversation: Conversation) -> str:
    """What lists show of a conversation: its last user turn (the question it asks)."""
    for message in reversed(conversation.messages):
        if message.get("role") == "user":
            return message_text(message).strip()[:MAX_QUESTION_CHARS]
    return ""


def _fingerprint(payload: dict[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


async def _earlier(
    sessions: async_sessionmaker[AsyncSession],
    tenant: str,
    key: str,
    fingerprint: str,
    key_field: str,
) -> Job | None:
    async with sessions() as session:
        job = await repo.get_job_by_idempotency_key(session, tenant, key)
    if job is not None and job.request_hash != fingerprint:
        raise IdempotencyConflict(
            f"{key_field} {key!r} was used for a different request (job {job.id})",
            field=key_field,
            job_id=job.id,
        )
    return job


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
    priority: str = "default",
    tool_result: Mapping[str, Any] | None = None,
) -> str:
    """A child job seeded with the parent's journal (its first ``fork_from`` entries).

    ``strict`` reproduces the parent with zero model calls or fails on the first call
    that is not in the journal; ``live`` calls the model for anything new. Commits;
    enqueueing is the caller's next step, as after ``submit``.

    ``tool_result`` is a what-if on one tool call: ``{"seq": N, "output": "...",
    "error": None}`` replaces what the parent's journal entry N (a tool call) returned,
    keeps the entries up to it (``fork_from`` defaults to N) and runs the rest live.
    """
    priority = validate_priority(priority)
    what_if = _what_if(tool_result, mode, fork_from)
    if what_if is not None and fork_from is None:
        fork_from = what_if.seq
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
            conversation=parent.conversation,
            strategy=params.model_dump(mode="json"),
            budget=parent.budget,
            roles=bound,
            seed=parent.seed,
            tenant=parent.tenant,
            parent_job_id=parent.id,
            fork_point=fork_from,
            replay_mode=mode,
            priority=priority,
        )
        responses = None
        if what_if is not None:
            responses = {what_if.seq: await _overridden(session, parent.id, what_if)}
        await repo.copy_journal(
            session,
            source_job_id=parent.id,
            target_job_id=child.id,
            limit=fork_from,
            responses=responses,
        )
        return child.id


@dataclass(frozen=True)
class _WhatIf:
    seq: int
    output: str
    error: str | None


def _what_if(raw: Mapping[str, Any] | None, mode: str, fork_from: int | None) -> _WhatIf | None:
    if raw is None:
        return None
    seq, output, error = raw.get("seq"), raw.get("output", ""), raw.get("error")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise InvalidInput("tool_result.seq must be a journal entry number (1, 2, ...)",
                           field="tool_result.seq")  # fmt: skip
    if not isinstance(output, str) or not (error is None or isinstance(error, str)):
        raise InvalidInput("tool_result.output (and error) must be text", field="tool_result")
    unknown = set(raw) - {"seq", "output", "error"}
    if unknown:
        raise InvalidInput(f"tool_result: unknown field {sorted(unknown)[0]!r}",
                           field=f"tool_result.{sorted(unknown)[0]}")  # fmt: skip
    if mode != "live":
        raise InvalidInput("a what-if on a tool result needs live mode: what follows it "
                           "runs again", field="mode")  # fmt: skip
    if fork_from is not None and fork_from < seq:
        raise InvalidInput(f"fork_from ({fork_from}) must keep the overridden entry {seq}",
                           field="fork_from")  # fmt: skip
    return _WhatIf(seq, output, error)


async def _overridden(session: AsyncSession, parent_id: str, what_if: _WhatIf) -> dict[str, Any]:
    """The parent's tool-call entry ``seq`` with the what-if's result in place of its own."""
    entries = await repo.list_calls(session, parent_id, limit=what_if.seq)
    entry = entries[-1] if len(entries) == what_if.seq else None
    if entry is None or not entry.role.startswith(TOOL_ROLE_PREFIX):
        raise InvalidInput(f"journal entry {what_if.seq} of job {parent_id} is not a tool call",
                           field="tool_result.seq")  # fmt: skip
    details = {**(entry.response.get("details") or {}), "what_if": True}
    return {**entry.response, "output": what_if.output, "error": what_if.error,
            "details": details}  # fmt: skip
