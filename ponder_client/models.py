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
    cost: float | None
    copied_from: str | None


class JournalSummary(BaseModel):
    entries: int
    recorded: int
    copied: int
    prompt_tokens: int
    completion_tokens: int
    cost: float | None
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
    shipped: bool = False
    created_at: datetime
    updated_at: datetime


# Experiments (``app.api.experiment_schemas``): eval runs stored as data. The row fields
# leave out the server's input limits (lengths, patterns, ranges): a response is not
# re-validated, so a server that loosens a limit does not break an older client.


class DatasetRef(BaseModel):
    name: str = ""
    sha256: str = ""


class ArmSummary(BaseModel):
    """One arm's numbers, computed by the server from the stored rows (``evals``)."""

    n: int
    correct: int
    failed: int
    budget_exhausted: int
    accuracy: float | None
    ci_low: float | None = Field(description="Wilson score 95% interval.")
    ci_high: float | None
    mean_tokens: float | None = Field(description="Mean completion tokens per problem.")
    mean_tokens_by_role: dict[str, float]
    latency_p50: float | None = Field(description="Seconds.")
    latency_p90: float | None
    mean_cost: float | None
    total_cost: float | None
    cost_of_pass: float | None = Field(description="Mean cost / accuracy.")
    cost_of_pass_infinite: bool = False
    live_calls: int
    replayed_calls: int
    cost_known: bool = True
    mean_reasoning_tokens: float | None = None


class ArmOut(BaseModel):
    position: int
    label: str
    spec: dict[str, Any]
    params: dict[str, Any]
    roles: list[str]
    summary: ArmSummary | None


class Calls(BaseModel):
    live: int = 0
    replayed: int = 0


class ExperimentLinks(BaseModel):
    self: str
    rows: str


class ExperimentOut(BaseModel):
    """An experiment as ``GET /v1/experiments/{id}`` returns it: its arms, each with its
    summary (None for an arm without a stored summary)."""

    id: str
    name: str
    dataset: DatasetRef
    problems: int
    created_at: datetime
    parent_experiment_id: str | None
    settings: dict[str, Any]
    params: dict[str, Any] | None
    interrupted: bool
    calls: Calls
    arms: list[ArmOut]
    links: ExperimentLinks

    def arm(self, label: str) -> ArmOut:
        """The arm labelled ``label``; ``KeyError`` if there is none."""
        for arm in self.arms:
            if arm.label == label:
                return arm
        raise KeyError(label)


class ExperimentPage(BaseModel):
    items: list[ExperimentOut]
    next_cursor: str | None


class ProblemOut(BaseModel):
    index: int
    id: str


class RowOut(BaseModel):
    """What one arm answered on one problem, the job that answered it, and its spend."""

    problem_id: str
    problem_index: int
    strategy: str = Field(description="The arm's label.")
    job_id: str | None = None
    status: str
    answer: str | None = None
    expected: str = ""
    correct: bool
    tokens: dict[str, int] = Field(default_factory=dict, description="Completion tokens by role.")
    prompt_tokens: dict[str, int] = Field(default_factory=dict)
    completion_tokens: int = 0
    calls: int = 0
    latency_s: float = 0.0
    cost: float | None = 0.0
    live_calls: int = 0
    replayed_calls: int = 0
    budget_exhausted: bool = False
    error: dict[str, Any] | None = None
    parent_job_id: str | None = None
    wall_s: float | None = None
    difficulty: float | None = None
    reasoning_tokens: int = 0
    arm: int = Field(description="The arm's position in `arms`.")


class ExperimentRows(BaseModel):
    """The arms × problems grid: every stored row, by arm then problem."""

    experiment_id: str
    arms: list[str]
    problems: list[ProblemOut]
    rows: list[RowOut]
