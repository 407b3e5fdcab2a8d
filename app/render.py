"""Human and JSON output for the CLI. Human output goes through rich; JSON is plain."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.tree import Tree

from core.db.models import Job, ModelCall, Span
from core.keys import KeyInfo
from core.runner import RunOutcome
from strategies.registry import STRATEGIES

_piped = Console().is_terminal is False
# A pipe or a CI log has no width: don't crop trace lines to 80 columns there.
out = Console(soft_wrap=True, width=200 if _piped else None)
err = Console(stderr=True)


class Progress:
    """A one-line live status on stderr while a job runs: calls, tokens, elapsed."""

    def __init__(self, job_id: str, *, enabled: bool) -> None:
        self.job_id = job_id
        self.enabled = enabled and err.is_terminal
        self.calls_started = 0
        self.calls_done = 0
        self.tokens = 0
        self.events = 0
        self.started = time.monotonic()
        self._live: Live | None = None

    def __enter__(self) -> Progress:
        if self.enabled:
            self._live = Live(self._line(), console=err, refresh_per_second=8, transient=True)
            self._live.__enter__()
        else:
            # No terminal (a pipe, CI): one line at start keeps long runs from looking hung.
            err.print(f"job {self.job_id}: running…", highlight=False)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.__exit__(exc_type, exc, tb)

    def _line(self) -> str:
        elapsed = time.monotonic() - self.started
        in_flight = self.calls_started - self.calls_done
        return (
            f"[bold]job {self.job_id[:12]}[/] · calls {self.calls_done} done, {in_flight} running"
            f" · {self.tokens} tokens · {elapsed:.1f}s"
        )

    def on_event(self, kind: str, payload: dict[str, Any]) -> None:
        if kind == "call_start":
            self.calls_started += 1
        elif kind == "call_end":
            self.calls_done += 1
            self.tokens += int(payload.get("tokens", 0))
        elif kind == "event":
            self.events += 1
        if self._live is not None:
            self._live.update(self._line())


def outcome_json(outcome: RunOutcome) -> dict[str, Any]:
    result = outcome.result or {}
    return {
        "job_id": outcome.job_id,
        "status": outcome.status,
        "answer": result.get("answer"),
        "votes": result.get("votes", {}),
        "budget_exhausted": result.get("budget_exhausted", False),
        "usage": outcome.usage,
        "error": outcome.error,
        "live_calls": outcome.live_calls,
        "journal_hits": outcome.replayed_calls,
        "wall_s": round(outcome.wall_s, 3),
        **outcome.extra,
    }


def cost_text(cost: float | None) -> str:
    """A cost as the CLI prints it: "n/a" when unknown (a pool without prices), not 0."""
    return "n/a" if cost is None else f"{cost:.6f}"


def reasoning_text(row: dict[str, Any]) -> str:
    tokens = str(row.get("reasoning_tokens", 0))
    return f"~{tokens}" if row.get("reasoning_tokens_estimated") else tokens


def outcome(outcome: RunOutcome) -> None:
    data = outcome_json(outcome)
    if outcome.status != "succeeded":
        error = outcome.error or {}
        out.print(f"[red]job {outcome.job_id} {outcome.status}[/]: {error.get('message', '')}")
        return
    answer = data["answer"]
    out.print(f"[bold]answer:[/] {answer if answer is not None else '(none)'}", highlight=False)
    if data["votes"]:
        votes = ", ".join(f"{k} × {v}" for k, v in data["votes"].items())
        out.print(f"votes: {votes}", highlight=False)
    if data["budget_exhausted"]:
        out.print("[yellow]budget exhausted: best answer so far[/]")
    usage = outcome.usage or {}
    table = Table(box=None, pad_edge=False)
    columns = ("role", "calls", "prompt tok", "generated tok", "of which reasoning", "cost")
    for column in columns:
        table.add_column(column, justify="right" if column != "role" else "left")
    for role, row in usage.get("by_role", {}).items():
        table.add_row(
            role,
            str(row["calls"]),
            str(row["prompt_tokens"]),
            str(row["completion_tokens"]),
            reasoning_text(row),
            cost_text(row.get("cost")),
        )
    out.print(table)
    if usage.get("by_role"):
        out.print(
            f"total cost {cost_text(usage.get('cost'))}"
            + ("" if usage.get("cost_known", True) else " (a pool has no prices)"),
            highlight=False,
        )
    out.print(
        f"wall {outcome.wall_s:.2f}s · {outcome.live_calls} live calls, "
        f"{outcome.replayed_calls} from journal · job {outcome.job_id}",
        highlight=False,
    )
    if "parent_job_id" in data:
        out.print(f"replay of {data['parent_job_id']}", highlight=False)


def _span_json(span: Span) -> dict[str, Any]:
    latency = None
    if span.end_ts is not None and span.start_ts is not None:
        latency = round((span.end_ts - span.start_ts).total_seconds() * 1000, 3)
    return {
        "id": span.id,
        "parent_id": span.parent_id,
        "seq": span.seq,
        "kind": span.kind,
        "name": span.name,
        "start": span.start_ts.isoformat() if span.start_ts else None,
        "end": span.end_ts.isoformat() if span.end_ts else None,
        "duration_ms": latency,
        "prompt_tokens": span.prompt_tokens,
        "completion_tokens": span.completion_tokens,
        "cost": span.cost,
        "attributes": span.attributes,
    }


def trace_json(job: Job, spans: Sequence[Span], calls: Sequence[ModelCall]) -> dict[str, Any]:
    return {
        "job": {
            "id": job.id,
            "status": job.status,
            "question": job.question,
            "strategy": job.strategy,
            "budget": job.budget,
            "roles": job.roles,
            "result": job.result,
            "usage": job.usage,
            "error": job.error,
            "parent_job_id": job.parent_job_id,
            "fork_point": job.fork_point,
            "replay_mode": job.replay_mode,
        },
        "spans": [_span_json(s) for s in spans],
        "journal": [
            {
                "seq": c.seq,
                "key": c.key,
                "occurrence": c.occurrence,
                "role": c.role,
                "endpoint": c.endpoint,
                "latency_ms": c.latency_ms,
                "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens,
                "attempts": len(c.attempts),
                "source_job_id": c.source_job_id,
            }
            for c in calls
        ],
    }


def _rollup(spans: Sequence[Span]) -> dict[str, tuple[int, int]]:
    """(prompt, generated) tokens per span including all descendants."""
    children: dict[str | None, list[Span]] = defaultdict(list)
    for span in spans:
        children[span.parent_id].append(span)
    totals: dict[str, tuple[int, int]] = {}

    def visit(span: Span) -> tuple[int, int]:
        p, c = span.prompt_tokens or 0, span.completion_tokens or 0
        for child in children[span.id]:
            cp, cc = visit(child)
            p, c = p + cp, c + cc
        totals[span.id] = (p, c)
        return p, c

    for root in children[None]:
        visit(root)
    return totals


def _label(span: Span, totals: dict[str, tuple[int, int]]) -> str:
    attrs = span.attributes or {}
    if span.kind == "event":
        shown = {k: v for k, v in attrs.items() if k not in ("status",)}
        return f"[cyan]• {span.name}[/] {json.dumps(shown, default=str)[:160]}"
    duration = ""
    if span.end_ts is not None:
        duration = f" {(span.end_ts - span.start_ts).total_seconds() * 1000:.0f} ms"
    p, c = totals.get(span.id, (0, 0))
    extra = ""
    if span.kind == "model_call":
        source = {"hit": "from journal", "miss": "live"}.get(attrs.get("journal", ""), "")
        extra = f" [dim]{source} {attrs.get('endpoint') or ''}[/]"
        if attrs.get("error"):
            extra += f" [red]{attrs['error']}[/]"
    title = span.kind if span.name == span.kind else f"{span.kind} {span.name}"
    return f"[bold]{title}[/]{duration} · {p}+{c} tok{extra}"


def trace_tree(job: Job, spans: Sequence[Span]) -> None:
    totals = _rollup(spans)
    answer = (job.result or {}).get("answer")
    tree = Tree(f"job {job.id} · {job.status} · answer {answer}")
    nodes: dict[str, Tree] = {}
    for span in spans:
        parent = nodes.get(span.parent_id) if span.parent_id else None
        node = (parent or tree).add(_label(span, totals))
        nodes[span.id] = node
    out.print(tree)


def strategies(as_json: bool) -> int:
    if as_json:
        print(
            json.dumps(
                {
                    kind: {"doc": s.doc, "schema": s.params.model_json_schema()}
                    for kind, s in STRATEGIES.items()
                }
            )
        )
        return 0
    for kind, strategy in STRATEGIES.items():
        out.print(f"[bold]{kind}[/] — {strategy.doc.splitlines()[0]}")
        for name, field in strategy.params.model_fields.items():
            if name == "kind":
                continue
            desc = f" — {field.description}" if field.description else ""
            out.print(f"    {name} = {field.default!r}{desc}", highlight=False)
    return 0


def api_keys(keys: Sequence[KeyInfo], as_json: bool) -> None:
    """Ids, tenants and dates of API keys; the keys themselves are never stored."""
    rows = [
        {
            "id": k.id,
            "tenant": k.tenant,
            "created": k.created_at.isoformat(),
            "revoked": k.revoked_at.isoformat() if k.revoked_at else None,
            "scope": k.scope,
        }
        for k in keys
    ]
    if as_json:
        print(json.dumps(rows))
        return
    if not rows:
        err.print("no API keys (create one with `ponder keys create --tenant T`)")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("id", "tenant", "scope", "created", "revoked"):
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(row["id"], row["tenant"], row["scope"], row["created"], row["revoked"] or "-")
    out.print(table, highlight=False)
