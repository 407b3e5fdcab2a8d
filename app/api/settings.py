"""Settings of the HTTP layer only (``PONDER_API_*``); everything else is core's Settings."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from core.config_file import API_FIELDS, API_SECTION, ConfigFileSource
from core.settings_errors import BadSettings, describe


def _rate(value: str | None) -> str | None:
    if value is None:
        return None
    from limits import parse_many

    try:
        parse_many(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not a rate such as '20/second' or '100/minute;5/second'"
        ) from None
    return value


BUDGET_LIMITS = ("max_tokens", "max_calls", "max_seconds", "max_cost")


def _budget_fields(value: dict[str, int | float] | None) -> dict[str, int | float] | None:
    if value is not None:
        unknown = sorted(set(value) - set(BUDGET_LIMITS))
        if unknown:
            raise ValueError(f"unknown budget fields {unknown}; valid: {list(BUDGET_LIMITS)}")
    return value


class _CheckedLimits(BaseModel):
    """The checks both the limits and a tenant's overrides of them pass."""

    @field_validator("rate", check_fields=False)
    @classmethod
    def _check_rate(cls, value: str | None) -> str | None:
        return _rate(value)

    @field_validator("default_budget", "max_budget", check_fields=False)
    @classmethod
    def _check_budget(cls, value: dict[str, int | float] | None) -> Any:
        return _budget_fields(value)


class TenantLimits(_CheckedLimits):
    """What one tenant may spend and ask for. ``PONDER_API_LIMITS__*`` sets every
    tenant's; ``PONDER_API_TENANT_LIMITS__<TENANT>__*`` overrides single fields for one."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    default_budget: dict[str, int | float] = Field(
        default_factory=lambda: {"max_tokens": 100_000, "max_seconds": 600.0}
    )
    """Budget limits a job gets for each one it does not set itself (JSON)."""
    max_budget: dict[str, int | float] = Field(
        default_factory=lambda: {"max_tokens": 2_000_000, "max_seconds": 3600.0}
    )
    """Largest limit a job may ask for, per budget field (JSON); a larger one is a 422
    naming the field. With the default budget filling in what a job leaves out, no job
    is ever unbounded in these fields, however its strategies are composed."""
    max_jobs_in_flight: int | None = Field(default=10_000, ge=1)
    """Jobs queued or running at once; the next submission is a 429 with Retry-After."""
    rate: str | None = None
    """Requests per tenant to /v1, in the notation of the `limits` library (`20/second`,
    `1000/hour;50/second`); over it, a 429 with Retry-After. Default: no limit."""


class TenantLimitsOverride(_CheckedLimits):
    """Fields set here replace the ``PONDER_API_LIMITS__*`` value for one tenant."""

    model_config = ConfigDict(extra="forbid")

    default_budget: dict[str, int | float] | None = None
    max_budget: dict[str, int | float] | None = None
    max_jobs_in_flight: int | None = Field(default=None, ge=1)
    rate: str | None = None


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PONDER_API_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        use_attribute_docstrings=True,
    )

    executor: Literal["celery", "in-process"] = "celery"
    """Who runs jobs when the app is built without an explicit executor: the Celery
    broker (production), or this process (a single-process demo; jobs die with it)."""
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    """Larger request bodies get a 413 before any of them is parsed."""
    page_size: int = Field(default=50, ge=1, le=1000)

    """Items per page of a list when the request sets no ``limit``."""
    max_page_size: int = Field(default=500, ge=1, le=10_000)

    """Largest ``limit`` a list request may ask for."""
    sse_poll_min_s: float = Field(default=0.05, gt=0)
    """Without push (SQLite), a live event stream polls the spans table this often while
    events keep coming..."""
    sse_poll_max_s: float = Field(default=0.5, gt=0)
    """...and backs off to this while the job is quiet. With push (PostgreSQL ``NOTIFY``,
    ``core.live``), the safety poll: the longest a lost notification can delay an event."""
    chat_timeout_s: float = Field(default=300.0, gt=0)
    """How long ``/v1/chat/completions`` waits for its job before answering 504."""
    health_timeout_s: float = Field(default=2.0, gt=0)
    """Bound on the pool probes of ``/readyz`` and ``/v1/pools``."""
    key_cache_s: float = Field(default=2.0, ge=0)
    """How long an API key's tenant is remembered by one API process: a revoked key is
    refused at most this long after ``ponder keys revoke`` (0: ask the database every
    request)."""
    metrics_token: SecretStr | None = None
    """Bearer token a scraper sends to ``/metrics`` (which reports every tenant's jobs,
    tokens and cost). Set: ``/metrics`` needs exactly this token (401 otherwise, admin
    keys included). Unset: ``/metrics`` needs an admin API key (403 for a tenant key),
    or nothing while no API key exists (the loopback-only open mode)."""
    metrics_cache_s: float = Field(default=2.0, ge=0)
    """``/metrics`` aggregates SQL tables; scrapes closer together than this share one."""
    interactive: bool = True
    """``/v1/chat/completions`` runs its job in the API process that took the request
    (``app.api.interactive``): under a lease with heartbeats like a worker's, answered when
    the run ends, no broker hop and no polling. The job stays durable: if this process
    dies, its heartbeats stop and a worker's reaper resumes the job from its journal."""
    interactive_max_jobs: int = Field(default=8, ge=1)
    """Interactive jobs one API process runs at once; past this, requests take the
    broker as other jobs do."""
    limits: TenantLimits = Field(default_factory=TenantLimits)
    """Every tenant's budget defaults and caps, quota and rate (``PONDER_API_LIMITS__*``)."""
    tenant_limits: dict[str, TenantLimitsOverride] = Field(default_factory=dict)
    """Per-tenant overrides (``PONDER_API_TENANT_LIMITS__<TENANT>__*``)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # PONDER_CONFIG's `api:` section (limits, tenant_limits), below .env and the
        # environment, as core's Settings reads its sections (core.config_file).
        config_file = ConfigFileSource(settings_cls, API_FIELDS, API_SECTION)
        return init_settings, env_settings, dotenv_settings, config_file, file_secret_settings

    def limits_for(self, tenant: str) -> TenantLimits:
        override = self.tenant_limits.get(tenant)
        if override is None:
            return self.limits
        return self.limits.model_copy(update=override.model_dump(exclude_none=True))


def load_api_settings() -> ApiSettings:
    """``ApiSettings()``, or ``BadSettings`` with one sentence per error (naming the
    ``PONDER_API_*`` variable, or the config file's line)."""
    try:
        return ApiSettings()
    except (ValidationError, SettingsError) as exc:
        raise BadSettings(describe(exc, prefix="PONDER_API_")) from None


def api_settings_or_exit(program: str = "ponder api") -> ApiSettings:
    """For the API's entry point: the settings, or each sentence on stderr and exit 2."""
    import sys

    try:
        return load_api_settings()
    except BadSettings as exc:
        for sentence in exc.sentences:
            print(f"{program}: bad settings: {sentence}", file=sys.stderr)
        raise SystemExit(2) from None
