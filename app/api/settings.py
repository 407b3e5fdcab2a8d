"""Settings of the HTTP layer only (``PONDER_API_*``); everything else is core's Settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PONDER_API_", env_file=".env", extra="ignore", use_attribute_docstrings=True
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
    """A live event stream polls the spans table this often while events keep coming..."""
    sse_poll_max_s: float = Field(default=0.5, gt=0)
    """...and backs off to this while the job is quiet."""
    chat_timeout_s: float = Field(default=300.0, gt=0)
    """How long ``/v1/chat/completions`` waits for its job before answering 504."""
    health_timeout_s: float = Field(default=2.0, gt=0)
    """Bound on the pool probes of ``/readyz`` and ``/v1/pools``."""
    metrics_cache_s: float = Field(default=2.0, ge=0)
    """``/metrics`` aggregates SQL tables; scrapes closer together than this share one."""
