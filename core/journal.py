"""The journal: every model call and tool call of a job, keyed deterministically,
committed no later than anything built on it (``core.trace``).

A call's key is ``sha256(role, model, canonical request)`` plus its *occurrence*: the
how-many-th identical request this job has issued, counted when the call is issued (in
program order), not when it completes. Strategies take all randomness from the job's
seeded rng and issue calls in a deterministic order, so a re-run issues the same keys:

- resume: a re-run job finds its earlier calls here and pays for none of them again;
- replay: a child job seeded with its parent's entries reproduces the parent's trace
  (``strict`` mode fails on a miss, ``live`` calls the model);
- fork: the child is seeded with only the parent's first N entries.

A tool call is an entry like a model call, in the same order: its key is
``sha256("tool", name, canonical arguments)``, its role ``tool:<name>``, its request
``{"tool", "arguments"}`` and its response the ``ToolResult``. So a fork keeps the tool
results before its point, and a strict replay executes nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

from core.db.models import ModelCall
from strategies.protocol import ModelRequest

JournalMode = Literal["live", "strict"]


@dataclass(frozen=True)
class CallKey:
    key: str
    occurrence: int


def request_key(role: str, model: str, request: ModelRequest, *, stream: bool = False) -> str:
    # exclude_defaults keeps keys stable when a field with a default is added later.
    body = request.model_dump(mode="json", exclude_defaults=True)
    identity: dict[str, Any] = {"role": role, "model": model, "request": body}
    if stream:
        # A streamed call may be stopped part-way; it must never answer a plain call.
        identity["stream"] = True
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


TOOL_ROLE_PREFIX = "tool:"
SCHEMA_PREFIX = "schema:"
"""A tool server's description of a tool is journaled as a call to ``schema:<name>``."""


def tool_key(name: str, arguments: dict[str, Any]) -> str:
    identity = {"tool": name, "arguments": arguments}
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class Journal:
    def __init__(self, job_id: str, entries: list[ModelCall], mode: JournalMode = "live") -> None:
        self.job_id = job_id
        self.mode = mode
        self._entries: dict[tuple[str, int], ModelCall] = {
            (e.key, e.occurrence): e for e in entries
        }
        self._issued: Counter[str] = Counter()
        self._next_seq = max((e.seq for e in entries), default=0) + 1
        self.hits = 0
        self.misses = 0
        self.tool_hits = 0
        self.tool_misses = 0

    def issue(
        self, role: str, model: str, request: ModelRequest, *, stream: bool = False
    ) -> CallKey:
        """Assign the call's key now, synchronously, in program order."""
        key = request_key(role, model, request, stream=stream)
        occurrence = self._issued[key]
        self._issued[key] += 1
        return CallKey(key, occurrence)

    def lookup(self, call: CallKey) -> ModelCall | None:
        entry = self._entries.get((call.key, call.occurrence))
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    def issue_tool(self, name: str, arguments: dict[str, Any]) -> CallKey:
        """A tool call's key, assigned synchronously in program order like a model call's."""
        key = tool_key(name, arguments)
        occurrence = self._issued[key]
        self._issued[key] += 1
        return CallKey(key, occurrence)

    def lookup_tool(self, call: CallKey) -> ModelCall | None:
        """The recorded result, counted as a hit; a miss is counted by ``executed``, once
        the call really runs (the budget may refuse it first)."""
        entry = self._entries.get((call.key, call.occurrence))
        if entry is not None:
            self.tool_hits += 1
        return entry

    def executed(self) -> None:
        """Count a tool call that ran (``usage.tool_executions``)."""
        self.tool_misses += 1

    def schema(self, tool: str) -> tuple[str, dict[str, Any]] | None:
        """A tool's description and parameters as recorded for this job, if they were."""
        entry = self._entries.get((tool_key(SCHEMA_PREFIX + tool, {}), 0))
        if entry is None:
            return None
        return str(entry.response["description"]), dict(entry.response["parameters"])

    def has_schema(self, tool: str) -> bool:
        return self.schema(tool) is not None

    def new_schema_entry(
        self, tool: str, description: str, parameters: dict[str, Any]
    ) -> ModelCall:
        """Record what a tool server said its tool is (``schema``), before a model sees it."""
        call = self.issue_tool(SCHEMA_PREFIX + tool, {})
        return self.new_tool_entry(
            call,
            name=SCHEMA_PREFIX + tool,
            arguments={},
            result={"description": description, "parameters": parameters},
            latency_ms=0.0,
        )

    def new_tool_entry(
        self,
        call: CallKey,
        *,
        name: str,
        arguments: dict[str, Any],
        result: dict[str, Any],
        latency_ms: float,
    ) -> ModelCall:
        """A journal row for a tool call just executed; written before it is used."""
        entry = ModelCall(
            job_id=self.job_id,
            seq=self._next_seq,
            key=call.key,
            occurrence=call.occurrence,
            role=TOOL_ROLE_PREFIX + name,
            request={"tool": name, "arguments": arguments},
            response=result,
            endpoint=None,
            latency_ms=latency_ms,
            attempts=[],
            prompt_tokens=0,
            completion_tokens=0,
            cost=0.0,
        )
        self._next_seq += 1
        self._entries[(call.key, call.occurrence)] = entry
        return entry

    def new_entry(
        self,
        call: CallKey,
        *,
        role: str,
        request: ModelRequest,
        response: dict[str, Any],
        endpoint: str | None,
        latency_ms: float,
        attempts: list[dict[str, Any]],
        prompt_tokens: int,
        completion_tokens: int,
        cost: float,
    ) -> ModelCall:
        """A journal row for a call just answered; the caller writes it before returning."""
        entry = ModelCall(
            job_id=self.job_id,
            seq=self._next_seq,
            key=call.key,
            occurrence=call.occurrence,
            role=role,
            request=request.model_dump(mode="json", exclude_defaults=True),
            response=response,
            endpoint=endpoint,
            latency_ms=latency_ms,
            attempts=attempts,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost=cost,
        )
        self._next_seq += 1
        self._entries[(call.key, call.occurrence)] = entry
        return entry
