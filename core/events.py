"""The one event schema: what the trace is made of, in the DB, over SSE, in the API, in tests.

Every event shares an envelope — ``job_id``, ``span_id``, ``parent_span_id``, ``seq``,
``ts`` — and a ``type`` that selects the rest. Span rows map one to one onto events:

    span kind     event type     what it says
    job           job            the job's root span (question, replay mode)
    strategy      strategy       one strategy run (kind, params; answer once closed)
    span          span           a group of calls a strategy opened
    model_call    model_call     one journaled call: role, model, tokens, cost, latency
    tool_call     tool_call      one journaled tool call: tool, arguments, output, latency
    event         decision       a zero-length decision: a sample, a vote, a clamp

Two events are not span rows: ``job_finished`` (status, result, usage, error; closes a
live stream) and ``job_restarted`` (a worker re-ran the job from the top, so the spans
before it are replaced). ``seq`` is the span's position in program order; for the two
job events it is the highest span seq seen, so a stream stays ordered by ``seq``.

Example:
    >>> event = event_from_span(span_row)
    >>> parsed = EVENT_ADAPTER.validate_json(sse_message.data)
    >>> assert isinstance(parsed, ModelCallEvent) and parsed.role == "small"
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, Field, TypeAdapter


class SpanRow(Protocol):
    """What an event is built from: ``core.db.models.Span`` or anything shaped like it."""

    id: str
    job_id: str
    parent_id: str | None
    seq: int
    kind: str
    name: str
    start_ts: datetime
    end_ts: datetime | None
    attributes: dict[str, Any]
    prompt_tokens: int
    completion_tokens: int
    cost: float


class Envelope(BaseModel):
    job_id: str
    span_id: str | None = None
    parent_span_id: str | None = None
    seq: int
    ts: datetime
    """When it happened: a span's start, or the job's finish."""


class _SpanEvent(Envelope):
    name: str
    end_ts: datetime | None = None
    """None while the span is still open."""
    status: str | None = None
    """``ok``, the exception type that ended the span, or None while open."""
    duration_ms: float | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    """Everything the tracer recorded, including what the typed fields repeat."""

    @property
    def closed(self) -> bool:
        return self.end_ts is not None


class JobSpanEvent(_SpanEvent):
    type: Literal["job"] = "job"
    mode: str | None = None


class StrategyEvent(_SpanEvent):
    type: Literal["strategy"] = "strategy"
    kind: str
    params: dict[str, Any] = Field(default_factory=dict)
    answer: str | None = None
    budget_exhausted: bool | None = None


class GroupEvent(_SpanEvent):
    type: Literal["span"] = "span"


class ModelCallEvent(_SpanEvent):
    type: Literal["model_call"] = "model_call"
    role: str | None = None
    model: str | None = None
    key: str | None = None
    """The first 16 hex digits of the journal key."""
    n: int | None = None
    journal: Literal["hit", "miss"] | None = None
    """hit: answered from the journal, no model server asked; miss: a live call."""
    endpoint: str | None = None
    latency_ms: float | None = None
    """Of the live call (for a hit: as recorded when the call was first made)."""
    attempts: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    """The part of ``completion_tokens`` spent reasoning (server-reported or estimated)."""
    reasoning_tokens_estimated: bool = False
    """The server sent reasoning text without a count: ``reasoning_tokens`` is estimated."""
    cost: float = 0.0
    """From the pool's prices; 0 and meaningless when ``cost_known`` is false."""
    cost_known: bool = True
    """False when the call's pool has no price: its cost is unknown, not free."""
    error: str | None = None


class ToolCallEvent(_SpanEvent):
    type: Literal["tool_call"] = "tool_call"
    tool: str | None = None
    key: str | None = None
    """The first 16 hex digits of the journal key."""
    journal: Literal["hit", "miss"] | None = None
    """hit: answered from the journal, nothing executed; miss: executed."""
    latency_ms: float | None = None
    ok: bool | None = None
    """False when the tool reported an error (a traceback, a limit)."""
    error: str | None = None


class DecisionEvent(_SpanEvent):
    type: Literal["decision"] = "decision"


class JobFinishedEvent(Envelope):
    type: Literal["job_finished"] = "job_finished"
    status: str
    result: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class JobRestartedEvent(Envelope):
    type: Literal["job_restarted"] = "job_restarted"
    attempt: int
    """Spans with a lower ``seq`` than those that follow belong to the abandoned attempt."""


Event = Annotated[
    JobSpanEvent
    | StrategyEvent
    | GroupEvent
    | ModelCallEvent
    | ToolCallEvent
    | DecisionEvent
    | JobFinishedEvent
    | JobRestartedEvent,
    Field(discriminator="type"),
]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
SpanEventTypes = (
    JobSpanEvent | StrategyEvent | GroupEvent | ModelCallEvent | ToolCallEvent | DecisionEvent
)


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s,;'\"()]*[^\s,;'\"():.]")
"""A URL, without the punctuation that may follow it ("last: http://h:8001/v1: HTTP 500")."""


def public_endpoint(value: object) -> str | None:
    """An endpoint as a tenant may see it. Calls are recorded with the endpoint's
    position (``"endpoint 2 of 3"``); a row written before that holds the server's URL,
    which is the operator's (``/v1/pools``): it reads as ``"endpoint"``."""
    if value is None:
        return None
    text = str(value)
    return "endpoint" if "://" in text else text


def without_urls(text: str) -> str:
    """``text`` with every URL replaced by ``<endpoint>`` (errors of older rows)."""
    return _URL.sub("<endpoint>", text)


def public_attempts(attempts: list[Any]) -> list[Any]:
    """A journal row's attempts with ``public_endpoint`` endpoints and URL-free errors."""
    out: list[Any] = []
    for attempt in attempts:
        if isinstance(attempt, dict):
            attempt = {**attempt, "endpoint": public_endpoint(attempt.get("endpoint"))}
            if isinstance(attempt.get("error"), str):
                attempt["error"] = without_urls(attempt["error"])
        out.append(attempt)
    return out


def _duration_ms(start: datetime, end: datetime | None) -> float | None:
    return None if end is None else round((end - start).total_seconds() * 1000.0, 3)


def event_from_span(span: SpanRow) -> SpanEventTypes:
    """The typed event for one span row (open or closed)."""
    attrs = dict(span.attributes or {})
    if "endpoint" in attrs:
        attrs["endpoint"] = public_endpoint(attrs["endpoint"])
    if isinstance(attrs.get("error"), str):
        attrs["error"] = without_urls(attrs["error"])
    common: dict[str, Any] = {
        "job_id": span.job_id,
        "span_id": span.id,
        "parent_span_id": span.parent_id,
        "seq": span.seq,
        "ts": span.start_ts,
        "name": span.name,
        "end_ts": span.end_ts,
        "duration_ms": _duration_ms(span.start_ts, span.end_ts),
        "attributes": attrs,
    }
    if span.kind == "model_call":
        # A model call's row is written once, when the call has ended: it has no
        # "status" attribute; an error attribute says it failed.
        error = attrs.get("error")
        latency = attrs.get("latency_ms", attrs.get("recorded_latency_ms"))
        attempts = attrs.get("attempts")
        return ModelCallEvent(
            **common,
            status=None if span.end_ts is None else ("error" if error else "ok"),
            role=attrs.get("role"),
            model=attrs.get("model"),
            key=attrs.get("key"),
            n=attrs.get("n"),
            journal=attrs.get("journal"),
            endpoint=attrs.get("endpoint"),
            latency_ms=float(latency) if isinstance(latency, int | float) else None,
            attempts=attempts if isinstance(attempts, int) else None,
            prompt_tokens=span.prompt_tokens or 0,
            completion_tokens=span.completion_tokens or 0,
            reasoning_tokens=int(attrs.get("reasoning_tokens") or 0),
            reasoning_tokens_estimated=bool(attrs.get("reasoning_tokens_estimated")),
            cost=span.cost or 0.0,
            cost_known=attrs.get("cost_known") is not False,
            error=str(error) if error else None,
        )
    if span.kind == "tool_call":
        error = attrs.get("error")
        latency = attrs.get("latency_ms")
        ok = attrs.get("ok")
        return ToolCallEvent(
            **common,
            status=None if span.end_ts is None else ("error" if error else "ok"),
            tool=attrs.get("tool"),
            key=attrs.get("key"),
            journal=attrs.get("journal"),
            latency_ms=float(latency) if isinstance(latency, int | float) else None,
            ok=ok if isinstance(ok, bool) else None,
            error=str(error) if error else None,
        )
    if span.kind == "event":
        return DecisionEvent(**common, status="ok")
    status = attrs.get("status") if span.end_ts is not None else None
    common["status"] = str(status) if status is not None else None
    if span.kind == "job":
        return JobSpanEvent(**common, mode=attrs.get("mode"))
    if span.kind == "strategy":
        params = attrs.get("params")
        exhausted = attrs.get("budget_exhausted")
        return StrategyEvent(
            **common,
            kind=span.name,
            params=params if isinstance(params, dict) else {},
            answer=attrs.get("answer"),
            budget_exhausted=exhausted if isinstance(exhausted, bool) else None,
        )
    return GroupEvent(**common)


def is_container(span: SpanRow) -> bool:
    """Spans inserted when they open and updated when they close (the others are
    written once, complete)."""
    return span.kind in ("job", "strategy", "span")
