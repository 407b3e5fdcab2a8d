"""Layered settings: defaults < ``PONDER_CONFIG`` file < ``.env`` < ``PONDER_*`` env vars
< per-request params (the file: ``core.config_file``).

Nested values use ``__``: ``PONDER_POOLS__LARGE__ENDPOINTS='["http://gpu1:8000"]'``.
Loading settings has no side effects (no network, no directories created).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from core.tools.sandbox import SandboxLimits

ServerKind = Literal["vllm", "llamacpp", "openai", "simulator"]
EmbeddedRole = Literal["small", "large"]
EMBEDDED_ROLES: tuple[EmbeddedRole, ...] = ("small", "large")


class PoolSettings(BaseModel):
    """One model role's pool of OpenAI-compatible servers."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    endpoints: list[str] = Field(min_length=1)
    """Base URLs, e.g. ``http://10.0.0.5:8000`` (a trailing ``/v1`` is accepted)."""
    model: str

    """The model name the servers serve (vLLM's ``--served-model-name``); required."""
    kind: ServerKind = "openai"

    """What the servers are: ``vllm``, ``llamacpp``, ``openai`` (any OpenAI-compatible server)
    or ``simulator``; decides which request features are native and which are emulated."""
    api_key: SecretStr | None = None

    """Bearer key sent to the servers, if they need one."""
    max_concurrency: int = Field(default=64, ge=1)
    """Per endpoint: more outstanding requests than this wait in the client."""
    connect_timeout_s: float = Field(default=5.0, gt=0)

    """Seconds to open a connection to a server before trying another."""
    read_timeout_s: float = Field(default=600.0, gt=0)

    """Seconds to wait between bytes of an answer (a long generation streams nothing)."""
    max_attempts: int = Field(default=4, ge=1)

    """Attempts per model call, failover and backoff included; every attempt is journaled."""
    backoff_base_s: float = Field(default=0.2, ge=0)

    """First retry delay; it doubles per attempt, with full jitter."""
    backoff_max_s: float = Field(default=5.0, ge=0)

    """Cap on one retry delay (a server's Retry-After on 429/503 is honoured up to it)."""
    breaker_failures: int = Field(default=5, ge=1)
    """Consecutive failures that open an endpoint's circuit."""
    breaker_reset_s: float = Field(default=30.0, gt=0)
    """How long an open circuit stays open before one probe request is let through."""
    max_n: int | None = Field(default=None, ge=1)
    """Largest ``n`` one request may carry (llama.cpp: its slot count); larger fans out."""
    native_n: bool | None = None
    """Whether the server samples ``n`` choices itself; default by kind."""
    price_input_per_1k: float | None = Field(default=None, ge=0)

    """Cost of 1,000 prompt tokens, in the currency of ``budget.max_cost``. Neither price
    set (the default): cost unknown, shown as "n/a" (JSON null) and ``budget.max_cost``
    refused; set 0 for a model that is truly free. One price set: the other is 0."""
    price_output_per_1k: float | None = Field(default=None, ge=0)

    """Cost of 1,000 generated tokens (reasoning included); None: unknown."""

    @property
    def priced(self) -> bool:
        """A price is set (0 counts): this pool's calls have a known cost. Setting only
        one price is a decision (output-only pricing), so the other one is then 0."""
        return self.price_input_per_1k is not None or self.price_output_per_1k is not None

    @field_validator("endpoints")
    @classmethod
    def _strip_v1(cls, endpoints: list[str]) -> list[str]:
        cleaned = []
        for url in endpoints:
            url = url.rstrip("/")
            if url.endswith("/v1"):
                url = url[: -len("/v1")]
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"endpoint {url!r} must start with http:// or https://")
            cleaned.append(url)
        return cleaned

    def supports_native_n(self) -> bool:
        if self.native_n is not None:
            return self.native_n
        return self.kind in ("vllm", "openai", "simulator")

    def seeded_n_is_identical(self) -> bool:
        """llama.cpp samples every one of ``n`` choices from the same seed: fan out instead."""
        return self.kind == "llamacpp"


class EmbeddedSettings(BaseModel):
    """The local CPU models used when no pools are configured."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    enabled: bool = True

    """Start the embedded models when no pools are configured."""
    roles: list[EmbeddedRole] = Field(default_factory=lambda: list(EMBEDDED_ROLES))

    """Which embedded models to run: ``small`` (Qwen2.5-Coder 0.5B), ``large`` (1.5B)."""
    threads: int = Field(default=2, ge=1)

    """CPU threads per embedded model server."""
    slots: int = Field(default=16, ge=1)
    """Parallel sequences per model; also the largest ``n`` one request may carry."""
    context: int = Field(default=32768, ge=512)
    """Total KV cache tokens per model, shared by its slots."""
    cache_dir: Path | None = None

    """Where the assembled model files are kept; default ``data_dir/models``."""
    start_timeout_s: float = Field(default=120.0, gt=0)

    """How long to wait for an embedded model server to answer its health check."""


class WorkerSettings(BaseModel):
    """Celery workers, job leases, cancellation and the reaper (``PONDER_WORKER__*``)."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    key_prefix: str = ""
    """Prefix of every broker key on Redis (kombu's ``global_keyprefix``), so that several
    deployments or test runs can share one Redis without consuming each other's jobs."""
    heartbeat_s: float = Field(default=5.0, gt=0)
    """How often a worker stamps ``heartbeat_at`` on each job it runs."""
    stale_after_s: float = Field(default=30.0, gt=0)
    """A running job whose heartbeat is older than this is presumed orphaned."""
    cancel_poll_s: float = Field(default=0.25, gt=0)
    """How often a worker checks its running jobs for cancel requests."""
    reaper_interval_s: float = Field(default=10.0, gt=0)

    """Time between two sweeps of the reaper."""
    queued_timeout_s: float = Field(default=300.0, gt=0)
    """A job still queued this long after its last enqueue is published again."""
    unheld_after_s: float = Field(default=5.0, gt=0)
    """On Redis, a job queued this long whose message no queue and no worker holds (the
    broker lost it: a restart without append-only, a failed publish) is published again
    at the next sweep, instead of after ``queued_timeout_s``."""
    max_attempts: int = Field(default=3, ge=1)
    """Runs of one job a worker may start; a job whose workers keep dying fails after this."""
    infra_retry_window_s: float = Field(default=900.0, gt=0)
    """How long a worker keeps retrying a job whose run failed on the infrastructure (the
    database or the network under it). An outage shorter than this costs at most one
    retry interval after it ends; a longer one leaves the job to the reaper."""
    infra_retry_max_interval_s: float = Field(default=5.0, gt=0)
    """Longest wait between those retries (they start at 0.5 s and double). The retry
    takes over the failed run's lease at once, fenced by the job's attempt count."""
    time_limit_s: float = Field(default=3600.0, gt=0)
    """Ceiling on one run of a job; also the limit of a job whose budget has no max_seconds."""
    time_limit_grace_s: float = Field(default=30.0, ge=0)
    """Added to a budget's ``max_seconds``: the budget stops the strategy first, politely."""
    hard_limit_extra_s: float = Field(default=30.0, gt=0)
    """Celery's hard limit (the child is killed) comes this long after the soft one."""
    broker_poll_s: float = Field(default=0.1, gt=0)
    """Polling interval of the embedded (filesystem) broker; Redis blocks instead."""

    @model_validator(mode="after")
    def _heartbeat_below_staleness(self) -> WorkerSettings:
        if self.stale_after_s <= 2 * self.heartbeat_s:
            raise ValueError(
                "stale_after_s must exceed twice heartbeat_s, or live jobs would be reaped"
            )
        return self

    def time_limits(self, max_seconds: float | None) -> tuple[float, float]:
        """``(soft, hard)`` seconds for one run of a job with this budget ``max_seconds``."""
        soft = self.time_limit_s
        if max_seconds is not None:
            soft = min(max_seconds + self.time_limit_grace_s, self.time_limit_s)
        return soft, soft + self.hard_limit_extra_s


class DatabasePoolSettings(BaseModel):
    """Connections each process keeps to the database (the API, each worker process).

    A request holds at most one connection at a time, so ``size + max_overflow`` is how
    many requests one API process serves at once; the rest wait up to ``timeout_s`` for
    one and are then answered 503 with ``Retry-After``, never left hanging. Keep
    ``(size + max_overflow) x processes`` under PostgreSQL's ``max_connections`` (100 by
    default).
    """

    model_config = ConfigDict(use_attribute_docstrings=True)

    size: int = Field(default=10, ge=1, le=1000)
    """Connections kept open."""
    max_overflow: int = Field(default=20, ge=0, le=1000)
    """Extra connections opened under load and closed when returned."""
    timeout_s: float = Field(default=5.0, gt=0, le=300)
    """How long a request waits for a free connection before a 503."""

    def engine_options(self) -> dict[str, Any]:
        return {
            "pool_size": self.size,
            "max_overflow": self.max_overflow,
            "pool_timeout": self.timeout_s,
        }


class ToolSettings(BaseModel):
    """One operator-configured tool a job may name (``PONDER_TOOLS__<NAME>__*``): a tool
    of an MCP server, reached by the official ``mcp`` SDK over stdio or HTTP."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    kind: Literal["mcp"] = "mcp"
    """``mcp``: a tool of a Model Context Protocol server."""
    command: list[str] | None = None
    """Start the server as a child process and talk over stdio, e.g.
    ``["python", "-m", "my_tools"]``. Give this or ``url``."""
    url: str | None = None
    """A running server's streamable-HTTP endpoint, e.g. ``http://tools:8000/mcp``."""
    tool: str | None = None
    """The tool's name on the server (default: this tool's configured name)."""
    description: str | None = None
    """What a model is told the tool does (default: the server's description)."""
    timeout_s: float = Field(default=30.0, gt=0)
    """Longest one call may take (the job's deadline may cut it sooner)."""
    env: dict[str, str] = Field(default_factory=dict)
    """Environment of a stdio server (nothing of Ponder's own environment is passed)."""

    @model_validator(mode="after")
    def _one_transport(self) -> ToolSettings:
        if (self.command is None) == (self.url is None):
            raise ValueError("give exactly one of command (stdio) or url (HTTP)")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PONDER_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        use_attribute_docstrings=True,
    )

    environment: Literal["development", "production", "test"] = "development"

    """Deployment kind, for logs and defaults that differ between them."""
    data_dir: Path = Path("data")

    """Where the SQLite file, the embedded broker's folder and the model cache live."""
    database_url: str | None = None
    """SQLAlchemy URL. Default: a SQLite file in ``data_dir``."""
    db_pool: DatabasePoolSettings = Field(default_factory=DatabasePoolSettings)

    """Database connections per process (``PONDER_DB_POOL__*``, below)."""
    pools: dict[str, PoolSettings] = Field(default_factory=dict)

    """Model roles and their servers (``PONDER_POOLS__<ROLE>__*``, below). None configured:
    the embedded models serve ``small`` and ``large``."""
    embedded: EmbeddedSettings = Field(default_factory=EmbeddedSettings)

    """The embedded CPU models (``PONDER_EMBEDDED__*``, below)."""
    default_strategy: str = "self_consistency"

    """The strategy of a job that names none."""
    broker_url: str | None = None
    """Celery broker (``PONDER_BROKER_URL``), e.g. ``redis://127.0.0.1:6379/0``. Default: a
    directory broker in ``data_dir/broker`` that needs no server (embedded mode)."""
    worker: WorkerSettings = Field(default_factory=WorkerSettings)

    """Workers, leases, retries and the reaper (``PONDER_WORKER__*``, below)."""
    python_tool: bool = True

    """Offer the built-in ``python`` tool (programs in a bubblewrap sandbox, limits in
    ``PONDER_SANDBOX__*``; it refuses to run where it cannot sandbox)."""
    sandbox: SandboxLimits = Field(default_factory=SandboxLimits)

    """Limits of one sandboxed program (``PONDER_SANDBOX__*``, below; ``docs/sandbox.md``)."""
    tools: dict[str, ToolSettings] = Field(default_factory=dict)

    """Operator-configured MCP tools by name (``PONDER_TOOLS__<NAME>__*``, below)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # PONDER_CONFIG's pools and tools, below .env and the environment (core.config_file).
        from core.config_file import API_SECTION, CORE_SECTIONS, ConfigFileSource

        config_file = ConfigFileSource(settings_cls, CORE_SECTIONS, allowed=(API_SECTION,))
        return init_settings, env_settings, dotenv_settings, config_file, file_secret_settings

    def tool_names(self) -> list[str]:
        """Every tool a job may name here."""
        return sorted({*self.tools, *(["python"] if self.python_tool else [])})

    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://localhost/"

    def broker_dir(self) -> Path:
        """Where the embedded filesystem broker keeps its messages."""
        return (self.data_dir / "broker").resolve()

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'ponder.db').resolve()}"


def pool_env(pools: dict[str, PoolSettings]) -> dict[str, str]:
    """``PONDER_POOLS__<ROLE>__<FIELD>`` variables that recreate ``pools`` in a child process.

    Only fields that differ from their defaults are written; lists go as JSON, which is
    how pydantic-settings reads complex values.
    """
    env: dict[str, str] = {}
    for role, pool in pools.items():
        data = pool.model_dump(mode="json", exclude_defaults=True)
        if pool.api_key is not None:
            data["api_key"] = pool.api_key.get_secret_value()
        for key, value in data.items():
            name = f"PONDER_POOLS__{role.upper()}__{key.upper()}"
            env[name] = value if isinstance(value, str) else json.dumps(value)
    return env


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
