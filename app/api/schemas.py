"""Request and response bodies of the v1 API (the OpenAI-compatible ones live in
``openai_compat``). Trace events are ``core.events.Event``: one schema everywhere."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.api.inputs import check_json
from core.db.models import Job
from core.events import Event, without_urls
from core.jobs import MAX_QUESTION_CHARS
from strategies.protocol import AnswerKind

Priority = Literal["high", "default", "low"]
JobStatusName = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class _Strict(BaseModel):
    # Unknown fields are refused with a 422 naming them: a typo ("budjet") must not be
    # silently ignored and run the job with defaults.
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _sane_json(cls, data: Any) -> Any:
        check_json(data)  # NUL, NaN/Infinity, nesting: a 422 naming the field
        return data


class JobCreate(_Strict):
    question: str | None = Field(
        default=None,
        max_length=MAX_QUESTION_CHARS,
        description="The problem as one text. Give this or `messages`.",
        examples=["What is 17 * 23?"],
    )
    messages: list[dict[str, Any]] | None = Field(
        default=None,
        description="A whole conversation, as OpenAI chat messages (system, user, "
        "assistant with `tool_calls`, tool results). Give this or `question`.",
        examples=[[{"role": "user", "content": "My number is 17."}]],
    )
    tools: list[dict[str, Any]] | None = Field(
        default=None, description="Functions the model may call, as OpenAI defines them."
    )
    tool_choice: str | dict[str, Any] | None = Field(
        default=None, description='"none", "auto", "required", or one function.'
    )
    response_format: dict[str, Any] | None = Field(
        default=None, description="`json_object`, or `json_schema` with its schema."
    )
    answer_kind: AnswerKind | None = Field(
        default=None,
        description="What the strategy votes on: number, json, tool_calls or text. "
        "Default: tool_calls with tools, json with a JSON response_format, else number.",
    )
    stream: bool = Field(
        default=False,
        description="Generate the visible answer as a stream (journaled so); the OpenAI "
        "face sets it for `stream: true` and sends the tokens as they come.",
    )
    strategy: dict[str, Any] | str | None = Field(
        default=None,
        description='A strategy spec `{"kind": ..., **params}` (see GET /v1/strategies), '
        'just the kind, or a preset with overrides `{"preset": name, **params}` (see GET '
        "/v1/presets). Default: the server's default strategy.",
        examples=[{"kind": "self_consistency", "n": 8}],
    )
    budget: dict[str, Any] | None = Field(
        default=None,
        description="max_tokens, max_calls, max_seconds, max_cost, per_role.",
        examples=[{"max_tokens": 4000}],
    )
    roles: dict[str, str] | None = Field(
        default=None,
        description="Strategy role -> configured pool name (never a URL).",
        examples=[{"small": "large"}],
    )
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    priority: Priority = "default"


class ToolResultOverride(_Strict):
    seq: int = Field(ge=1, description="The parent's journal entry: a tool call.")
    output: str = Field(default="", description="What the tool returns instead.")
    error: str | None = Field(default=None, description="Or the error it fails with.")


class ReplayCreate(_Strict):
    mode: Literal["strict", "live"] = "strict"
    fork_from: int | None = Field(
        default=None,
        ge=0,
        description="Keep only the parent's first N journal entries (default: all).",
    )
    strategy: dict[str, Any] | None = Field(
        default=None, description="Parameter overrides merged into the parent's spec."
    )
    roles: dict[str, str] | None = Field(
        default=None, description="Role -> configured pool name (live mode only)."
    )
    priority: Priority = "default"
    tool_result: ToolResultOverride | None = Field(
        default=None,
        description="What if a tool had returned this: replaces one tool call's result, "
        "keeps the journal up to it and runs the rest live (mode live).",
    )


class JobLinks(BaseModel):
    self: str
    trace: str
    events: str


class JobOut(BaseModel):
    id: str
    status: str
    question: str
    conversation: dict[str, Any] | None = None
    strategy: dict[str, Any]
    budget: dict[str, Any]
    roles: dict[str, Any]
    seed: int
    priority: str
    result: dict[str, Any] | None
    usage: dict[str, Any] | None
    error: dict[str, Any] | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    parent_job_id: str | None
    fork_point: int | None
    replay_mode: str | None
    idempotency_key: str | None
    links: JobLinks

    @classmethod
    def of(cls, job: Job) -> JobOut:
        base = f"/v1/jobs/{job.id}"
        return cls(
            id=job.id,
            status=job.status,
            question=job.question,
            conversation=job.conversation,
            strategy=job.strategy,
            budget=job.budget or {},
            roles=job.roles or {},
            seed=job.seed,
            priority=job.priority or "default",
            result=job.result,
            usage=job.usage,
            error=_public_error(job.error),
            attempts=job.attempts,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            parent_job_id=job.parent_job_id,
            fork_point=job.fork_point,
            replay_mode=job.replay_mode,
            idempotency_key=job.idempotency_key,
            links=JobLinks(self=base, trace=f"{base}/trace", events=f"{base}/events"),
        )


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next (older) page; null on the last page."
    )


class JournalEntryOut(BaseModel):
    seq: int
    key: str
    occurrence: int
    role: str
    endpoint: str | None
    latency_ms: float
    attempts: int
    prompt_tokens: int
    completion_tokens: int
    cost: float | None = Field(description="Null when the pool has no prices.")
    copied_from: str | None = Field(description="The job this entry was copied from.")


class JournalSummary(BaseModel):
    entries: int
    recorded: int
    """Entries this job paid for (live calls)."""
    copied: int
    """Entries seeded from a parent job (replay, fork)."""
    prompt_tokens: int
    completion_tokens: int
    cost: float | None = Field(
        description="The entries' sum; null when any ran on a pool without prices "
        "(a partial sum would read as the whole)."
    )
    cost_known: bool = True
    calls: list[JournalEntryOut]


class TraceOut(BaseModel):
    job: JobOut
    events: list[Event]
    journal: JournalSummary


class CallSide(BaseModel):
    role: str | None
    model: str | None
    key: str | None
    journal: str | None
    prompt_tokens: int
    completion_tokens: int
    cost: float
    latency_ms: float | None
    texts: list[str] | None = None


class Divergence(BaseModel):
    index: int
    """0-based position among each job's model calls, in issue order."""
    reason: Literal["request", "response", "only_in_a", "only_in_b"]
    differences: list[str]
    """Request fields that differ (``n``, ``messages``...), or ``choices`` for a response."""
    a: CallSide | None
    b: CallSide | None


class Deltas(BaseModel):
    """b minus a."""

    calls: int
    live_calls: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    call_latency_ms: float
    wall_s: float | None


class CallComparison(BaseModel):
    index: int
    same_request: bool
    same_response: bool | None
    completion_tokens_delta: int
    latency_ms_delta: float | None


class DiffOut(BaseModel):
    a: str
    b: str
    answers: tuple[str | None, str | None]
    identical: bool
    first_divergence: Divergence | None
    deltas: Deltas
    calls: list[CallComparison]


class StrategyOut(BaseModel):
    kind: str
    model: str = Field(description="Its preset's name on /v1/chat/completions.")
    doc: str
    json_schema: dict[str, Any] = Field(alias="schema")

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class BreakerReportOut(BaseModel):
    worker: str
    state: str
    reason: str
    at: datetime


class EndpointOut(BaseModel):
    url: str
    breaker: str = Field(
        description="The worst of this API process's own breaker and every worker's "
        "reported one: open > half_open > closed."
    )
    reported_by_workers: list[BreakerReportOut] = Field(
        default_factory=list,
        description="Workers whose breaker for this endpoint is open or half-open now.",
    )
    outstanding: int
    consecutive_failures: int
    total_requests: int
    total_failures: int
    healthy: bool | None = None
    health_status: int | None = None
    health_latency_ms: float | None = None
    health_error: str | None = None


class PoolOut(BaseModel):
    role: str
    model: str
    kind: str
    endpoints: list[EndpointOut]


class Check(BaseModel):
    ok: bool
    detail: str


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, Check]


class PresetIn(_Strict):
    spec: dict[str, Any] = Field(description='A strategy spec `{"kind": ..., **params}`.')
    description: str = Field(default="", max_length=2000)


class PresetOut(BaseModel):
    name: str
    spec: dict[str, Any] = Field(description="The concrete spec, every parameter filled in.")
    description: str
    source: dict[str, Any] | None = Field(
        description="Where the values came from (e.g. `ponder calibrate`'s data and fit)."
    )
    model: str = Field(description="Its model name on /v1/chat/completions.")
    shipped: bool = Field(
        default=False,
        description="Shipped with Ponder (fitted to the embedded models; see `source`): "
        "every tenant has it, and a preset of the same name replaces it.",
    )
    created_at: datetime
    updated_at: datetime


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")  # errors may add e.g. `valid` or `job_id`
    code: str = Field(examples=["invalid_input"])
    message: str
    field: str | None = Field(default=None, description="The field to fix, dotted.")
    request_id: str | None = Field(
        default=None, description="Also in the X-Request-ID header; the server log has it."
    )


class ErrorOut(BaseModel):
    """The one body of every failure."""

    error: ErrorDetail


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorOut, "description": description}


V1_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _error("No, an unknown or a revoked API key."),
    403: _error("The key's scope does not allow this."),
    404: _error("No such job, preset or model for this tenant."),
    422: _error("Bad input; `error.field` names the field."),
    429: _error("Over the tenant's rate or jobs-in-flight limit; retry after `Retry-After`."),
    503: _error("Overloaded or the database is down; retry after `Retry-After` seconds."),
}
"""Failures any /v1 operation may answer (each operation adds its own)."""

OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    **V1_ERRORS,
    400: _error("Bad input, as OpenAI answers it; `error.param` names the field."),
    409: _error("The job was cancelled, or an Idempotency-Key was reused for another body."),
    500: _error("The job failed for a reason a retry cannot fix (`x-should-retry: false`)."),
    502: _error("A model server failed the job; a retry replays it from its journal."),
    504: _error("The job did not finish in time, or a model call timed out; retry to wait."),
}
"""The OpenAI face's failures, in OpenAI's error shape (``error.type``, ``error.param``),
with Ponder's ``code`` and ``request_id`` (docs/api.md: statuses and retries)."""


def _public_error(error: dict[str, Any] | None) -> dict[str, Any] | None:
    """A job's error as a tenant may see it: rows saved before errors named endpoints by
    position may still hold a model server's URL in their message."""
    if error is None or not isinstance(error.get("message"), str):
        return error
    return {**error, "message": without_urls(error["message"])}
