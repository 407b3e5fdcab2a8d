"""Response bodies of the dashboard's JSON routes (``/dashboard/api``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from app.api.schemas import JobOut
from core.events import Event


class SpansOut(BaseModel):
    """A job and its trace events, without the journal: the journal's rows carry every
    prompt and response, which the dashboard loads one call at a time."""

    job: JobOut
    events: list[Event]


class TokenOut(BaseModel):
    token: str
    logprob: float
    top: list[tuple[str, float]] = Field(default_factory=list)


class ChoiceOut(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    tokens: list[TokenOut] | None = Field(
        default=None, description="Sampled tokens with logprobs, when the call asked for them."
    )
    tokens_truncated: bool = False


class CallTextOut(BaseModel):
    """One model call's request and response, as journaled."""

    span_id: str
    seq: int
    """The span's position in the trace."""
    role: str
    key: str
    occurrence: int
    journal_seq: int
    """The entry's position in the job's journal (recording order)."""
    fork_from: int
    """``fork_from`` for ``POST /v1/jobs/{id}/replay`` that keeps every entry recorded
    before this call, so the child runs this call again and everything after it."""
    copied_from: str | None
    endpoint: str | None
    latency_ms: float
    attempts: list[dict[str, Any]]
    request: dict[str, Any]
    choices: list[ChoiceOut]
