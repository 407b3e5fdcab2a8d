"""``ctx.tools[name]`` as core implements it: a tool call journaled like a model call.

One tool call, in order: canonicalise the arguments -> assign the journal key (tool,
canonical arguments, occurrence) and open the ``tool_call`` span, synchronously, so both
follow program order -> journal hit? answer from it : (strict or no backend? fail :
reserve the tool budget, execute, write journal row + span in one transaction) -> return.
The result is on record before the strategy sees it: a resumed job executes no journaled
call again, a strict replay executes nothing, and a fork keeps the results before its
point (``core.journal``).
"""

from __future__ import annotations

import json
import time
from typing import Any

from core import metrics
from core.budget import JobBudget
from core.errors import JournalMiss
from core.journal import Journal
from core.tools.backends import ToolBackend
from core.trace import Tracer, now
from strategies.protocol import ToolResult

MAX_SPAN_TEXT = 2000


def canonical_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """The arguments as JSON would round-trip them (tuples become lists, keys strings):
    the form the key is computed from, and the form the tool receives."""
    loaded: dict[str, Any] = json.loads(json.dumps(arguments, sort_keys=True))
    return loaded


class JournaledTool:
    """One configured tool for one job run (implements ``strategies.protocol.Tool``)."""

    def __init__(
        self,
        name: str,
        backend: ToolBackend | None,
        *,
        description: str,
        parameters: dict[str, Any],
        journal: Journal,
        budget: JobBudget,
        tracer: Tracer,
    ) -> None:
        """``backend`` None: nothing may execute (a strict replay); every miss fails."""
        self.name = name
        self.description = description
        self.parameters = parameters
        self.backend = backend
        self.journal = journal
        self.budget = budget
        self.tracer = tracer

    def as_function(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    async def call(self, arguments: dict[str, Any]) -> ToolResult:
        args = canonical_arguments(arguments)
        key = self.journal.issue_tool(self.name, args)
        span = self.tracer.new_span(
            "tool_call",
            f"tool.{self.name}",
            {"tool": self.name, "key": key.key[:16], "arguments": _short(args)},
        )
        entry = self.journal.lookup_tool(key)
        if entry is not None:
            self.budget.charge_tool_hit(entry.latency_ms / 1000)
            result = ToolResult.model_validate({**entry.response, "replayed": True})
            self._close(span, result, "hit", entry.latency_ms)
            return result
        if self.backend is None or self.journal.mode == "strict":
            error = JournalMiss(
                f"strict replay: tool call {key.key[:12]}#{key.occurrence} to {self.name!r} "
                "is not in the journal",
                key=key.key,
                occurrence=key.occurrence,
                tool=self.name,
            )
            self._fail(span, error)
            raise error
        try:
            timeout_s = self.budget.reserve_tool(self.name)
        except BaseException as exc:
            self._fail(span, exc)
            raise
        # Earlier journal rows commit while the tool runs (see ``RoleModel``'s ``live``).
        self.tracer.writer.commit_soon()
        started = time.perf_counter()
        seconds: float | None = None
        self.journal.executed()
        try:
            self.tracer.notify("tool_start", {"tool": self.name})
            result = await self.backend.execute(args, timeout_s)
            seconds = time.perf_counter() - started
        except BaseException as exc:
            seconds = time.perf_counter() - started
            self._fail(span, exc)
            raise
        finally:
            self.budget.settle_tool(seconds)
        latency_ms = seconds * 1000
        record = result.model_dump(mode="json", exclude={"replayed"})
        journal_entry = self.journal.new_tool_entry(
            key, name=self.name, arguments=args, result=record, latency_ms=latency_ms
        )
        self._close(span, result, "miss", latency_ms)
        # Record before the strategy sees the result: a crash after this line never
        # executes this call again.
        done = self.tracer.writer.submit([journal_entry, span], wait=True)
        assert done is not None
        await done
        self.tracer.notify("tool_end", {"tool": self.name})
        return result

    def _close(self, span: Any, result: ToolResult, journal: str, latency_ms: float) -> None:
        metrics.tool_call(self.name, hit=journal == "hit", ok=result.ok, error=None)
        span.attributes = {
            **span.attributes,
            "journal": journal,
            "latency_ms": round(latency_ms, 3),
            "ok": result.ok,
            "output": _short(result.output),
            **({"error": _short(result.error)} if result.error else {}),
            **({"details": result.details} if result.details else {}),
        }
        span.end_ts = now()
        if journal == "hit":
            self.tracer.writer.submit([span])

    def _fail(self, span: Any, exc: BaseException) -> None:
        metrics.tool_call(self.name, hit=False, ok=False, error=exc)
        span.attributes = {**span.attributes, "error": f"{type(exc).__name__}: {exc}"}
        span.end_ts = now()
        self.tracer.writer.submit([span])


def _short(value: Any) -> Any:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= MAX_SPAN_TEXT else text[:MAX_SPAN_TEXT] + "…"
