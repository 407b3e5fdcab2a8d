"""Request and response bodies of ``/v1/experiments``: eval runs stored as data.

A row is the eval's row (``evals.results.Row``): what one arm answered on one problem,
the job that answered it, and what it spent. Summaries are ``evals``' numbers (accuracy
with its Wilson 95% interval, tokens, latency percentiles, cost), computed by the server
from the stored rows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.api.inputs import ID_PATTERN, check_json

MAX_ARMS = 64
MAX_ROWS_PER_REQUEST = 1000
MAX_INT = 2**31 - 1
"""The columns are 32-bit integers: a larger value is a 422, not a database error."""


class _Strict(BaseModel):
    # As app.api.schemas: unknown fields are a 422 naming them, and no NUL, NaN or
    # runaway nesting reaches the database.
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _sane_json(cls, data: Any) -> Any:
        check_json(data)
        return data


class DatasetRef(_Strict):
    name: str = Field(default="", max_length=1000, description="The dataset file's name.")
    sha256: str = Field(default="", pattern=r"^([0-9a-f]{64})?$")


class ArmIn(_Strict):
    label: str = Field(min_length=1, max_length=2000, examples=["self_consistency n=4"])
    spec: dict[str, Any] = Field(description="The strategy spec as the user wrote it.")
    params: dict[str, Any] = Field(description="The validated spec, defaults filled in.")
    roles: list[str] = Field(default_factory=list, max_length=32)


class ExperimentCreate(_Strict):
    name: str = Field(min_length=1, max_length=256)
    dataset: DatasetRef = Field(default_factory=DatasetRef)
    problems: int = Field(default=0, ge=0, le=MAX_INT, description="Problems per arm.")
    settings: dict[str, Any] = Field(
        default_factory=dict, description="How it ran: backend, budget, seed, concurrency."
    )
    arms: list[ArmIn] = Field(min_length=1, max_length=MAX_ARMS)
    params: dict[str, Any] | None = Field(
        default=None, description="A replay's what-if parameters."
    )
    parent_experiment_id: str | None = Field(
        default=None, pattern=ID_PATTERN, description="The experiment this one replays."
    )


class _RowFields(BaseModel):
    problem_id: str = Field(min_length=1, max_length=256)
    problem_index: int = Field(ge=0, le=MAX_INT)
    strategy: str = Field(description="The arm's label.")
    job_id: str | None = Field(default=None, pattern=ID_PATTERN)
    status: str = Field(max_length=16)
    answer: str | None = None
    expected: str = ""
    correct: bool
    tokens: dict[str, int] = Field(default_factory=dict, description="Completion tokens by role.")
    prompt_tokens: dict[str, int] = Field(default_factory=dict)
    completion_tokens: int = Field(default=0, ge=0, le=MAX_INT)
    calls: int = Field(default=0, ge=0)
    latency_s: float = Field(default=0.0, ge=0)
    cost: float | None = Field(
        default=0.0, ge=0, description="From pool prices; null when a pool had none (n/a)."
    )
    live_calls: int = Field(default=0, ge=0)
    replayed_calls: int = Field(default=0, ge=0)
    budget_exhausted: bool = False
    error: dict[str, Any] | None = None
    parent_job_id: str | None = Field(default=None, pattern=ID_PATTERN)
    wall_s: float | None = None
    difficulty: float | None = None
    reasoning_tokens: int = Field(
        default=0, ge=0, le=MAX_INT, description="The part of completion_tokens spent reasoning."
    )


class RowIn(_RowFields, _Strict):
    pass


class RowsCreate(_Strict):
    rows: list[RowIn] = Field(max_length=MAX_ROWS_PER_REQUEST)
    interrupted: bool = Field(default=False, description="The run stopped before the end.")


class RowOut(_RowFields):
    arm: int = Field(description="The arm's position in `arms`.")


class ArmSummary(BaseModel):
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
    cost_known: bool = Field(
        default=True, description="False when a pool had no prices: the costs are null (n/a)."
    )
    mean_reasoning_tokens: float | None = Field(
        default=None, description="Mean reasoning tokens per problem (part of mean_tokens)."
    )


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


class ExperimentPage(BaseModel):
    items: list[ExperimentOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next (older) page; null on the last page."
    )


class ProblemOut(BaseModel):
    index: int
    id: str


class ExperimentRows(BaseModel):
    """The arms × problems grid: every stored row, by arm then problem."""

    experiment_id: str
    arms: list[str]
    problems: list[ProblemOut]
    rows: list[RowOut]
