"""docs/configuration.md, generated from the settings models so it cannot drift.

    python -m app.settings_reference           # rewrite docs/configuration.md
    python -m app.settings_reference --check   # exit 1 if it is stale (a test runs this)

Every ``PONDER_*`` variable: core's ``Settings`` (with the nested pool, embedded and
worker models) and the HTTP layer's ``ApiSettings``. Names, types, defaults and
constraints come from the models; descriptions from the fields' docstrings.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from app.api.settings import ApiSettings, TenantLimits
from core.logs import LogSettings
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

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
EXAMPLE = DOC.parent / "ponder.example.yaml"
"""An example config file, shown whole on the page (a test validates it)."""

HEADER = """# Configuration

Generated from the settings models by `python -m app.settings_reference`; do not edit
by hand (a test fails when this page is stale).

Settings are read, lowest precedence first, from defaults, the config file named by
`PONDER_CONFIG` (below), a `.env` file in the working directory, and environment
variables. Nested settings use `__`: `PONDER_WORKER__HEARTBEAT_S=2`. Lists and objects
are JSON: `PONDER_POOLS__SMALL__ENDPOINTS='["http://gpu1:8000","http://gpu2:8000"]'`. A
bad value stops `ponder` and the API at start with one sentence naming the variable.

## Config file

`PONDER_CONFIG=ponder.yaml` names one YAML file holding the model pools (roles, servers,
keys, prices, tuning), the MCP tools and the tenant limits (default and largest budgets,
jobs in flight, rates), validated by the same models as the variables below. A key path
in the file is a variable's name with `__` as `.`: `pools.large.max_concurrency` is
`PONDER_POOLS__LARGE__MAX_CONCURRENCY`, and the HTTP layer's `PONDER_API_*` settings sit
under `api:` (`api.limits.default_budget` is `PONDER_API_LIMITS__DEFAULT_BUDGET`). The
file holds `pools`, `tools` and `api.limits` / `api.tenant_limits` only; everything else
stays in the environment.

- **Precedence**: defaults < the file < `.env` < environment variables, merged field by
  field: `PONDER_POOLS__SMALL__MAX_CONCURRENCY=8` overrides that one field of a pool the
  file defines. `PONDER_CONFIG` itself is read from the environment only.
- **Secrets** come from environment variables the file names: `api_key: ${VLLM_API_KEY}`
  (the docker-compose syntax; `${VAR:-default}` gives a default, `$$` a literal `$`). An
  unset variable is an error naming its line.
- **Errors** are one sentence each, naming the file, the line and the key path, and
  unknown keys are errors (a typo is never silently ignored):
  `ponder.yaml line 7: pools.large.max_concurrency: Input should be greater than or equal to 1`,
  `ponder.yaml line 8: pools.large.max_concurency: unknown key (did you mean max_concurrency?)`.
  At start, `ponder`, the API and the workers stop with exit code 2.
- **Reload**: `kill -HUP` the API process (uvicorn's) and the worker's main process
  (`ponder worker`), or `ponder serve`, which passes it on to both. Each re-reads the
  file (and its variables); on an error it logs the sentence and keeps the
  configuration it had. Otherwise new jobs use the new pools,
  prices, tools and tenant limits at once, while jobs already running finish on the pool
  clients they started with. Replaced pool clients are closed once no job holds them (at
  the latest after `PONDER_WORKER__TIME_LIMIT_S` + `HARD_LIMIT_EXTRA_S`, the longest a
  run may last); replaced tools (MCP sessions) after that time. A reload that changes
  any pool builds every pool's client anew, circuit breakers closed. Settings outside
  the file (the database, the broker,
  worker timings) need a restart. Under `uvicorn --workers N`, SIGHUP to uvicorn's
  supervisor restarts its workers instead; signal each worker process.

An example with every section (`docs/ponder.example.yaml`):
"""

SECTIONS: list[tuple[str, str, type[BaseModel], str]] = [
    ("Core", "PONDER_", Settings, "The database, the broker, the data directory."),
    (
        "Model pools",
        "PONDER_POOLS__<ROLE>__",
        PoolSettings,
        "One block per model role a strategy names (`small`, `large`, `verifier`, ...). "
        "`ENDPOINTS` and `MODEL` are required for each role you configure; with no role "
        "configured, the embedded models serve `small` and `large`.",
    ),
    (
        "Database connections",
        "PONDER_DB_POOL__",
        DatabasePoolSettings,
        "Per process (the API, each worker process). A request holds one connection at a "
        "time; when all are busy for `TIMEOUT_S` the API answers 503 with `Retry-After`.",
    ),
    ("Embedded models", "PONDER_EMBEDDED__", EmbeddedSettings, "The local CPU models."),
    ("Workers and the reaper", "PONDER_WORKER__", WorkerSettings, "See docs/deploy.md."),
    (
        "Python sandbox",
        "PONDER_SANDBOX__",
        SandboxLimits,
        "Limits of one program run by the built-in `python` tool (bubblewrap; "
        "docs/sandbox.md). `PONDER_PYTHON_TOOL=false` removes the tool.",
    ),
    (
        "Tools (MCP)",
        "PONDER_TOOLS__<NAME>__",
        ToolSettings,
        "One block per tool a strategy may name (`executor`, `tools`), served by an MCP "
        "server: `COMMAND` (stdio, a JSON list) or `URL` (streamable HTTP). Jobs name "
        "tools, never servers or URLs.",
    ),
    (
        "Logs",
        "PONDER_LOG_",
        LogSettings,
        "Every process: the API, the workers and the reaper. JSON lines carry `job_id`, "
        "`tenant`, `request_id` and `trace_id` where known.",
    ),
    (
        "Metrics",
        "PONDER_METRICS_",
        MetricsSettings,
        "What every process counts (the API, each worker) and the port a worker serves "
        "it on; docs/observability.md#metrics.",
    ),
    ("HTTP API", "PONDER_API_", ApiSettings, "Read by the API process only."),
    (
        "Tenant limits",
        "PONDER_API_LIMITS__",
        TenantLimits,
        "Every tenant's budget defaults and caps, jobs in flight and request rate; "
        "`PONDER_API_TENANT_LIMITS__<TENANT>__<FIELD>` overrides one field for one tenant "
        "(e.g. `PONDER_API_TENANT_LIMITS__ACME__RATE=50/second`). Budgets are JSON, e.g. "
        "`PONDER_API_LIMITS__MAX_BUDGET='{\"max_tokens\": 500000}'`. See docs/api.md.",
    ),
]
_NESTED = {"pools", "embedded", "worker", "db_pool"}


def _type(info: FieldInfo) -> str:
    text = str(info.annotation).replace("typing.", "").replace("pathlib.", "")
    text = text.replace("pydantic.types.", "").replace("core.settings.", "")
    return text.replace("<class '", "").replace("'>", "").replace("|", "\\|")


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    value: Any = info.default
    if value is PydanticUndefined and info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    if isinstance(value, BaseModel):
        return "—"
    if isinstance(value, Path):
        value = str(value)
    return f"`{value!r}`"


def _bounds(info: FieldInfo) -> str:
    parts = []
    for meta in info.metadata:
        for name, sign in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
            bound = getattr(meta, name, None)
            if bound is not None:
                parts.append(f"{sign} {bound}")
        length = getattr(meta, "min_length", None)
        if length:
            parts.append(f"at least {length}")
    return ", ".join(parts)


def render() -> str:
    lines = [HEADER, "```yaml", EXAMPLE.read_text().rstrip("\n"), "```", ""]
    for title, prefix, model, intro in SECTIONS:
        lines += [f"## {title}", "", intro, "", "| variable | type | default | |"]
        lines.append("|---|---|---|---|")
        for name, info in model.model_fields.items():
            if (model is Settings and name in _NESTED) or (
                model is ApiSettings and name in ("limits", "tenant_limits")
            ):
                continue
            description = " ".join((info.description or "").split()).replace("|", "\\|")
            bounds = _bounds(info)
            if bounds:
                description = f"{description} ({bounds})"
            variable = f"`{prefix}{name.upper()}`"
            lines.append(f"| {variable} | `{_type(info)}` | {_default(info)} | {description} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC} is stale: run python -m app.settings_reference", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
