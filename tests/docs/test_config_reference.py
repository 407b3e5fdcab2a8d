"""docs/configuration.md lists every PONDER_* setting and must match the code."""

from __future__ import annotations

from pydantic import BaseModel

from app import settings_reference
from app.api.settings import ApiSettings, TenantLimits
from core.metrics import MetricsSettings
from core.settings import (
    DatabasePoolSettings,
    EmbeddedSettings,
    PoolSettings,
    Settings,
    ToolSettings,
    WorkerSettings,
)
from core.tools.sandbox import SandboxLimits


def test_configuration_page_is_up_to_date() -> None:
    assert settings_reference.DOC.read_text() == settings_reference.render(), (
        "docs/configuration.md is stale: run python -m app.settings_reference"
    )


def test_every_setting_is_documented_with_a_description() -> None:
    page = settings_reference.DOC.read_text()
    models: dict[str, type[BaseModel]] = {
        "PONDER_": Settings,
        "PONDER_POOLS__<ROLE>__": PoolSettings,
        "PONDER_EMBEDDED__": EmbeddedSettings,
        "PONDER_WORKER__": WorkerSettings,
        "PONDER_SANDBOX__": SandboxLimits,
        "PONDER_TOOLS__<NAME>__": ToolSettings,
        "PONDER_DB_POOL__": DatabasePoolSettings,
        "PONDER_METRICS_": MetricsSettings,
        "PONDER_API_": ApiSettings,
        "PONDER_API_LIMITS__": TenantLimits,
    }
    for prefix, model in models.items():
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no docstring"
            nested = ("pools", "embedded", "worker", "db_pool", "sandbox", "tools")
            if model is Settings and name in nested:
                continue
            if model is ApiSettings and name in ("limits", "tenant_limits"):
                continue
            assert f"`{prefix}{name.upper()}`" in page, name
