"""Layered settings: defaults < ``.env`` < ``PONDER_*`` env vars < per-request params.

Nested values use ``__``: ``PONDER_POOLS__LARGE__ENDPOINTS='["http://gpu1:8000"]'``.
Loading settings has no side effects (no network, no directories created).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ServerKind = Literal["vllm", "llamacpp", "openai", "simulator"]
EmbeddedRole = Literal["small", "large"]
EMBEDDED_ROLES: tuple[EmbeddedRole, ...] = ("small", "large")


class PoolSettings(BaseModel):
    """One model role's pool of OpenAI-compatible servers."""

    endpoints: list[str] = Field(min_length=1)
    """Base URLs, e.g. ``http://10.0.0.5:8000`` (a trailing ``/v1`` is accepted)."""
    model: str
    kind: ServerKind = "openai"
    api_key: SecretStr | None = None
    max_concurrency: int = Field(default=64, ge=1)
    """Per endpoint: more outstanding requests than this wait in the client."""
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=600.0, gt=0)
    max_attempts: int = Field(default=4, ge=1)
    backoff_base_s: float = Field(default=0.2, ge=0)
    backoff_max_s: float = Field(default=5.0, ge=0)
    breaker_failures: int = Field(default=5, ge=1)
    """Consecutive failures that open an endpoint's circuit."""
    breaker_reset_s: float = Field(default=30.0, gt=0)
    """How long an open circuit stays open before one probe request is let through."""
    max_n: int | None = Field(default=None, ge=1)
    """Largest ``n`` one request may carry (llama.cpp: its slot count); larger fans out."""
    native_n: bool | None = None
    """Whether the server samples ``n`` choices itself; default by kind."""
    price_input_per_1k: float = Field(default=0.0, ge=0)
    price_output_per_1k: float = Field(default=0.0, ge=0)

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

    enabled: bool = True
    roles: list[EmbeddedRole] = Field(default_factory=lambda: list(EMBEDDED_ROLES))
    threads: int = Field(default=2, ge=1)
    slots: int = Field(default=16, ge=1)
    """Parallel sequences per model; also the largest ``n`` one request may carry."""
    context: int = Field(default=16384, ge=512)
    """Total KV cache tokens per model, shared by its slots."""
    cache_dir: Path | None = None
    start_timeout_s: float = Field(default=120.0, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PONDER_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    environment: Literal["development", "production", "test"] = "development"
    data_dir: Path = Path("data")
    database_url: str | None = None
    """SQLAlchemy URL. Default: a SQLite file in ``data_dir``."""
    pools: dict[str, PoolSettings] = Field(default_factory=dict)
    embedded: EmbeddedSettings = Field(default_factory=EmbeddedSettings)
    default_strategy: str = "self_consistency"

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'ponder.db').resolve()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
