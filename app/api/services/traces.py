"""A job's trace as typed events, its journal summary, and the diff of two jobs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.api.schemas import (
    CallComparison,
    CallSide,
    Deltas,
    DiffOut,
    Divergence,
    JobOut,
    JournalEntryOut,
    JournalSummary,
    TraceOut,
)
from app.api.services.jobs import get_job
from core.db import repo
from core.db.models import Job, ModelCall, Span
from core.events import ModelCallEvent, ToolCallEvent, event_from_span, public_endpoint
from core.journal import TOOL_ROLE_PREFIX


def journal_summary(calls: Sequence[ModelCall]) -> JournalSummary:
    entries = [
        JournalEntryOut(
            seq=c.seq,
            key=c.key,
            occurrence=c.occurrence,
            role=c.role,
            endpoint=public_endpoint(c.endpoint),
            latency_ms=c.latency_ms,
            attempts=len(c.attempts or []),
            prompt_tokens=c.prompt_tokens,
            completion_tokens=c.completion_tokens,
            cost=_known_cost(c),
            copied_from=c.source_job_id,
        )
        for c in calls
    ]
    copied = sum(1 for c in calls if c.source_job_id is not None)
    cost_known = all(e.cost is not None for e in entries)
    return JournalSummary(
        entries=len(calls),
        recorded=len(calls) - copied,
        copied=copied,
        prompt_tokens=sum(c.prompt_tokens for c in calls),
        completion_tokens=sum(c.completion_tokens for c in calls),
        cost=round(sum(c.cost for c in calls), 8) if cost_known else None,
        cost_known=cost_known,
        calls=entries,
    )


def _known_cost(call: ModelCall) -> float | None:
    """The entry's cost, None when its pool had no prices: the column then holds 0, and
    the entry's response says so (``cost_known``)."""
    return None if (call.response or {}).get("cost_known") is False else call.cost


async def trace(session: AsyncSession, tenant: str, job_id: str) -> TraceOut:
    job = await get_job(session, tenant, job_id)
    spans = await repo.list_spans(session, job_id)
    calls = await repo.list_calls(session, job_id)
    return TraceOut(
        job=JobOut.of(job),
        events=[event_from_span(s) for s in spans],
        journal=journal_summary(calls),
    )


@dataclass
class _Call:
    """One model or tool call a job made, in issue order: its span joined to its journal
    row. A tool call reads as role ``tool:<name>``, no tokens, and its output as text."""

    event: ModelCallEvent | ToolCallEvent
    entry: ModelCall | None

    @property
    def role(self) -> str | None:
        if isinstance(self.event, ToolCallEvent):
            return f"{TOOL_ROLE_PREFIX}{self.event.tool}"
        return self.event.role

    @property
    def model(self) -> str | None:
        return self.event.model if isinstance(self.event, ModelCallEvent) else None

    @property
    def identity(self) -> tuple[str | None, str | None]:
        return (self.role, self.entry.key if self.entry else self.event.key)

    def tokens(self) -> tuple[int, int, float]:
        if isinstance(self.event, ToolCallEvent):
            return 0, 0, 0.0
        return self.event.prompt_tokens, self.event.completion_tokens, self.event.cost

    def side(self) -> CallSide:
        prompt, completion, cost = self.tokens()
        return CallSide(
            role=self.role,
            model=self.model,
            key=self.entry.key if self.entry else self.event.key,
            journal=self.event.journal,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost=cost,
            latency_ms=self.event.duration_ms,
            texts=_texts(self),
        )


def _calls(spans: Sequence[Span], entries: Sequence[ModelCall]) -> list[_Call]:
    # A span keeps only the key's first 16 hex digits; the occurrence is how many
    # identical calls the job issued before, which is the count in issue (seq) order.
    by_key = {(e.key[:16], e.occurrence): e for e in entries}
    seen: Counter[str] = Counter()
    out = []
    for span in spans:
        if span.kind not in ("model_call", "tool_call"):
            continue
        event = event_from_span(span)
        assert isinstance(event, ModelCallEvent | ToolCallEvent)
        short = event.key or ""
        entry = by_key.get((short, seen[short]))
        seen[short] += 1
        out.append(_Call(event, entry))
    return out


def _request_differences(a: ModelCall | None, b: ModelCall | None) -> list[str]:
    if a is None or b is None:
        return ["request"]
    ra: dict[str, Any] = a.request or {}
    rb: dict[str, Any] = b.request or {}
    fields = sorted(k for k in set(ra) | set(rb) if ra.get(k) != rb.get(k))
    if a.role != b.role:
        fields.insert(0, "role")
    return fields or ["model"]


def _texts(call: _Call) -> list[str] | None:
    if call.entry is None:
        return None
    response = call.entry.response
    if isinstance(call.event, ToolCallEvent):
        # What the tool returned is what a strategy read: its output, or its error.
        return [str(response.get("output") or ""), str(response.get("error") or "")]
    return [str(c.get("text", "")) for c in response.get("choices", [])]


def _live_model_calls(calls: list[_Call]) -> int:
    return sum(isinstance(c.event, ModelCallEvent) and c.event.journal == "miss" for c in calls)


def _sum_latency(calls: list[_Call]) -> float:
    return sum(c.event.duration_ms or 0.0 for c in calls)


def _usage(job: Job, key: str) -> float | None:
    value = (job.usage or {}).get(key)
    return float(value) if isinstance(value, int | float) else None


async def diff(session: AsyncSession, tenant: str, a_id: str, b_id: str) -> DiffOut:
    """Compare two jobs call by call, in issue order.

    Calls are the same request when their journal keys are equal (the key hashes role,
    model and the canonical request); the same response when their choices' texts are.
    The first index where either differs, or where one job has no call, is the first
    divergence. Latency is each call's wall time in its own job (a journal hit costs
    about nothing), so a strict replay shows the time it saved as a negative delta.
    """
    job_a = await get_job(session, tenant, a_id)
    job_b = await get_job(session, tenant, b_id)
    calls_a = _calls(await repo.list_spans(session, a_id), await repo.list_calls(session, a_id))
    calls_b = _calls(await repo.list_spans(session, b_id), await repo.list_calls(session, b_id))
    comparisons: list[CallComparison] = []
    first: Divergence | None = None
    for index in range(max(len(calls_a), len(calls_b))):
        ca = calls_a[index] if index < len(calls_a) else None
        cb = calls_b[index] if index < len(calls_b) else None
        if ca is None or cb is None:
            if first is None:
                first = Divergence(
                    index=index,
                    reason="only_in_b" if ca is None else "only_in_a",
                    differences=["call"],
                    a=ca.side() if ca else None,
                    b=cb.side() if cb else None,
                )
            continue
        same_request = ca.identity == cb.identity and ca.model == cb.model
        ta, tb = _texts(ca), _texts(cb)
        same_response = None if ta is None or tb is None else ta == tb
        comparisons.append(
            CallComparison(
                index=index,
                same_request=same_request,
                same_response=same_response,
                completion_tokens_delta=cb.tokens()[1] - ca.tokens()[1],
                latency_ms_delta=(
                    None
                    if ca.event.duration_ms is None or cb.event.duration_ms is None
                    else round(cb.event.duration_ms - ca.event.duration_ms, 3)
                ),
            )
        )
        if first is None and (not same_request or same_response is False):
            first = Divergence(
                index=index,
                reason="request" if not same_request else "response",
                differences=(
                    _request_differences(ca.entry, cb.entry) if not same_request else ["choices"]
                ),
                a=ca.side(),
                b=cb.side(),
            )
    wall_a, wall_b = _usage(job_a, "wall_s"), _usage(job_b, "wall_s")
    answer_a = (job_a.result or {}).get("answer")
    answer_b = (job_b.result or {}).get("answer")
    return DiffOut(
        a=a_id,
        b=b_id,
        answers=(answer_a, answer_b),
        identical=first is None and answer_a == answer_b,
        first_divergence=first,
        deltas=Deltas(
            calls=len(calls_b) - len(calls_a),
            live_calls=_live_model_calls(calls_b) - _live_model_calls(calls_a),
            prompt_tokens=sum(c.tokens()[0] for c in calls_b) - sum(c.tokens()[0] for c in calls_a),
            completion_tokens=sum(c.tokens()[1] for c in calls_b)
            - sum(c.tokens()[1] for c in calls_a),
            cost=round(
                sum(c.tokens()[2] for c in calls_b) - sum(c.tokens()[2] for c in calls_a), 8
            ),
            call_latency_ms=round(_sum_latency(calls_b) - _sum_latency(calls_a), 3),
            wall_s=None if wall_a is None or wall_b is None else round(wall_b - wall_a, 3),
        ),
        calls=comparisons,
    )
