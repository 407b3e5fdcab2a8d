"""What executes a tool call: the built-in Python sandbox, and the operator's MCP tools.

A backend knows nothing of journals or budgets: ``core.tools.journaled`` wraps each one
for a job. Backends are built per process from settings (``ToolBackends``), by name,
never from a URL in a request, and lazily: the sandbox's start-up probe and an MCP
server's session cost nothing until a job calls the tool.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from core.settings import Settings
from core.tools.bwrap import RunAs, probe
from core.tools.sandbox import PythonSandbox, SandboxLimits
from strategies.protocol import ToolResult

PYTHON = "python"
"""The built-in tool's name: run a Python 3 program in the sandbox."""

PYTHON_DESCRIPTION = (
    "Run a Python 3 program (standard library only, no network, no files kept) and "
    "return what it prints. Print the result you need."
)
PYTHON_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"code": {"type": "string", "description": "The whole program."}},
    "required": ["code"],
    "additionalProperties": False,
}
MAX_ERROR_CHARS = 2000


class ToolBackend(Protocol):
    """Executes calls to one configured tool."""

    name: str
    description: str
    parameters: dict[str, Any]

    async def execute(self, arguments: dict[str, Any], timeout_s: float | None) -> ToolResult:
        """Run one call. A failure of the call itself (a traceback, a limit, an error the
        server reports) is a ``ToolResult`` with ``error``; only a tool that cannot be
        reached at all raises."""
        ...


class PythonTool:
    """``python``: a program in a fresh bubblewrap sandbox (``core.tools.sandbox``)."""

    def __init__(self, limits: SandboxLimits | None = None, name: str = PYTHON) -> None:
        self.name = name
        self.description = PYTHON_DESCRIPTION
        self.parameters = PYTHON_PARAMETERS
        self.limits = limits or SandboxLimits()
        self._sandbox: PythonSandbox | None = None
        self._lock = asyncio.Lock()

    async def _get_sandbox(self) -> PythonSandbox:
        # Built on first use: the probe runs one sandboxed command (20-40 ms), and a
        # machine that cannot sandbox refuses here, with its one sentence, never earlier.
        async with self._lock:
            if self._sandbox is None:
                self._sandbox = await asyncio.to_thread(PythonSandbox, self.limits)
            return self._sandbox

    async def execute(self, arguments: dict[str, Any], timeout_s: float | None) -> ToolResult:
        code = arguments.get("code")
        if not isinstance(code, str) or not code.strip():
            return ToolResult(error="arguments.code must be a non-empty program")
        sandbox = await self._get_sandbox()
        # The job's deadline (or its tool-seconds budget) may come before the wall limit.
        wall = max(timeout_s, 0.1) if timeout_s is not None else None
        run = await sandbox.run(code, str(arguments.get("stdin") or ""), wall_seconds=wall)
        details: dict[str, Any] = {
            "exit_code": run.exit_code,
            "duration_ms": round(run.duration_ms, 3),
        }
        if run.truncated:
            details["truncated"] = True
        if run.killed_reason:
            details["killed_reason"] = run.killed_reason
        error = None
        if not run.ok:
            reason = run.killed_reason or f"exit code {run.exit_code}"
            tail = run.stderr[-MAX_ERROR_CHARS:].strip()
            error = f"{reason}: {tail}" if tail else reason
        return ToolResult(output=run.stdout, error=error, details=details)


class ToolBackends(Mapping[str, ToolBackend]):
    """The process's configured tools by name: the built-in ``python`` (unless turned
    off) and the operator's MCP tools."""

    def __init__(self, backends: Mapping[str, ToolBackend]) -> None:
        self._backends = dict(backends)

    @classmethod
    def default(cls) -> ToolBackends:
        return cls({PYTHON: PythonTool()})

    @classmethod
    def from_settings(cls, settings: Settings) -> ToolBackends:
        backends: dict[str, ToolBackend] = {}
        if settings.python_tool:
            backends[PYTHON] = PythonTool(settings.sandbox)
        for name, config in settings.tools.items():
            from core.tools.mcp import McpTool  # the mcp SDK, only where MCP is configured

            backends[name] = McpTool(name, config)
        return cls(backends)

    async def aclose(self) -> None:
        """Close what backends hold open (an MCP server's session and process)."""
        for backend in self._backends.values():
            close = getattr(backend, "aclose", None)
            if close is not None:
                await close()

    def __getitem__(self, name: str) -> ToolBackend:
        return self._backends[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._backends)

    def __len__(self) -> int:
        return len(self._backends)


def unavailable_here(name: str, settings: Settings) -> str | None:
    """Why this process cannot run the configured tool ``name`` (None: it can). Only the
    built-in sandbox depends on the process (an API container is not granted the
    namespaces a worker's is); the sentence is the sandbox's refusal."""
    if name != PYTHON or not settings.python_tool:
        return None
    return probe(None, RunAs.for_current_user())
