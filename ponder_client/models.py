"""What the API answers, as typed models.

Trace events are the server's own ``core.events`` union, imported as is: it is pure
pydantic (importing it costs ~0.08 s and loads nothing of the server). The response
bodies below mirror ``app.api.schemas`` field for field instead of importing it, because
that module pulls in FastAPI, SQLAlchemy, the pools and every strategy (~0.6 s, ~890
modules) and sits in the ``app`` layer, above ``evals``, which uses this client for
``ponder eval --url``. ``tests/unit/test_client_models.py`` fails when the two drift
apart. Fields a newer server adds are ignored (pydantic's default), so an older client
keeps working against a newer server.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.events import Event

FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


class JobLinks(BaseModel):
    self: str
    trace: str
    events: str


class JobOut(BaseModel):
    """A job as ``GET /v1/jobs/{id}`` returns it."""

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

    @property
    def done(self) -> bool:
        """Succeeded, failed or cancelled: nothing about it changes any more."""
        return self.status in FINAL_STATUSES

    @property
    def answer(self) -> str | None:
        """The result's final answer (None until the job succeeds)."""
        answer = (self.result or {}).get("answer")
        return None if answer is None else str(answer)


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


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
    cost: float
    copied_from: str | None


class JournalSummary(BaseModel):
    entries: int
    recorded: int
    copied: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
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
    reason: Literal["request", "response", "only_in_a", "only_in_b"]
    differences: list[str]
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
    model: str
    doc: str
    json_schema: dict[str, Any] = Field(alias="schema")

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class PresetOut(BaseModel):
    name: str
    spec: dict[str, Any]
    description: str
    source: dict[str, Any] | None
    model: str
    created_at: datetime
    updated_at: datetime
