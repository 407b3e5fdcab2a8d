"""Browser fixtures for the dashboard, and a synthetic large trace.

    chromium_path      session  Debian's chromium (skips with the reason elsewhere; fails
                                under CI=true, where browser tests must run)
    browser            module   headless Chromium driven by Playwright through
                                ``executable_path`` (Playwright's own download is never used)
    artifacts          session  ``test-artifacts/dashboard/``: screenshots (gitignored)

``write_synthetic_trace`` stores a finished job with N spans (parallel model calls with
journal entries, samples, routing decisions and a vote) straight into the database, for
the time-to-interactive test and ``bench/dashboard_tti.py``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from core.db.engine import make_engine
from core.db.models import Job, ModelCall, Span

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CHROMIUM = "/usr/bin/chromium"
# What DESIGN §10 measured to work headless on this machine kind.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run",
]  # fmt: skip


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = os.environ.get("PONDER_TEST_CHROMIUM", DEFAULT_CHROMIUM)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        reason = (
            f"no Chromium at {path}: install Debian's package (apt-get install chromium) "
            "or set PONDER_TEST_CHROMIUM; Playwright's browser download is not used"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: browser tests must run)")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    path = ROOT / "test-artifacts" / "dashboard"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


class _Trace:
    """Span and journal rows of one synthetic job, built in seq order."""

    def __init__(self, job_id: str, t0: datetime) -> None:
        self.job_id, self.t0 = job_id, t0
        self.spans: list[dict[str, Any]] = []
        self.calls: list[dict[str, Any]] = []

    def at(self, ms: float) -> datetime:
        return self.t0 + timedelta(milliseconds=ms)

    def span(
        self, kind: str, name: str, parent: str | None, start: float, end: float,
        attributes: dict[str, Any], completion_tokens: int = 0,
    ) -> str:  # fmt: skip
        span_id = uuid.uuid4().hex
        self.spans.append({
            "id": span_id, "job_id": self.job_id, "parent_id": parent,
            "seq": len(self.spans) + 1, "kind": kind, "name": name,
            "start_ts": self.at(start), "end_ts": self.at(end), "attributes": attributes,
            "prompt_tokens": 38 if kind == "model_call" else 0,
            "completion_tokens": completion_tokens, "cost": completion_tokens * 2e-6,
        })  # fmt: skip
        return span_id

    def decision(self, name: str, parent: str, at: float, **attributes: Any) -> None:
        self.span("event", name, parent, at, at, attributes)

    def call(self, parent: str, role: str, start: float, end: float, text: str) -> None:
        """A live model call: its span and its journal entry."""
        index = len(self.calls)
        key = hashlib.sha256(f"{self.job_id}:{index}".encode()).hexdigest()
        tokens = 12 + (index * 13) % 40
        attributes = {
            "role": role, "model": f"sim-{role}", "key": key[:16], "n": 1, "journal": "miss",
            "endpoint": "http://127.0.0.1:9/v1", "latency_ms": end - start, "attempts": 1,
            "finish_reasons": ["stop"],
        }  # fmt: skip
        self.span("model_call", f"{role}.generate", parent, start, end, attributes, tokens)
        self.calls.append({
            "job_id": self.job_id, "seq": index + 1, "key": key, "occurrence": 0, "role": role,
            "endpoint": attributes["endpoint"], "latency_ms": end - start, "attempts": [],
            "prompt_tokens": 38, "completion_tokens": tokens, "cost": tokens * 2e-6,
            "source_job_id": None, "created_at": self.at(end),
            "request": {"messages": [{"role": "user", "content": f"What is 2 + 3? ({text})"}],
                        "max_tokens": 64, "seed": index},
            "response": {"model": f"sim-{role}", "emulated_n": False,
                         "choices": [{"index": 0, "text": text, "finish_reason": "stop"}]},
        })  # fmt: skip


def write_synthetic_trace(
    database_url: str, *, tenant: str = "default", spans: int = 5000, fan_out: int = 8
) -> str:
    """Store a finished ``self_consistency``-shaped job with exactly ``spans`` spans.

    Rounds of ``fan_out`` concurrent model calls (small, and one large per round) in a
    group span, each call with its journal entry, then one ``sample`` decision per call
    and a ``route`` decision with an entropy and a score; a ``vote`` ends the trace.
    Returns the job id.
    """
    job_id = uuid.uuid4().hex
    trace = _Trace(job_id, datetime.now(UTC) - timedelta(minutes=5))
    rounds = max(1, (spans - 3) // (2 * fan_out + 2) + 1)
    end = rounds * 40.0 + 5
    root = trace.span("job", "job", None, 0, end, {"mode": "live", "status": "ok"})
    params = {"kind": "self_consistency", "n": rounds * fan_out, "role": "small"}
    done = {"params": params, "answer": "5", "status": "ok", "budget_exhausted": False}
    strategy = trace.span("strategy", "self_consistency", root, 0.2, end - 0.2, done)
    votes = {"5": 0, "7": 0}

    def room() -> bool:  # the last span is the vote
        return len(trace.spans) < spans - 1

    for r in range(rounds):
        start = r * 40.0 + 1
        if not room():
            break
        group = trace.span("span", f"round {r}", strategy, start, start + 35, {"round": r})
        answers = []
        for i in range(fan_out):
            if not room():
                break
            answer = "5" if (len(trace.calls) * 7) % 10 < 6 else "7"
            finish = start + 18 + (len(trace.calls) * 7) % 16
            role = "large" if i == fan_out - 1 else "small"
            trace.call(group, role, start + 0.4 * i, finish, f"Round {r}: the answer is {answer}.")
            answers.append(answer)
        for i, answer in enumerate(answers):
            if room():
                votes[answer] += 1
                trace.decision("sample", group, start + 36 + 0.1 * i, index=i, answer=answer)
        if room():
            route = {"route": "large" if r % 3 == 0 else "small", "threshold": 0.6,
                     "entropy": 0.2 + (r % 7) / 10, "score": 0.5 + (r % 5) / 10}  # fmt: skip
            trace.decision("route", strategy, start + 37.5, **route)
    while room():  # fewer spans than one round needs: pad with decisions
        trace.decision("note", strategy, 2)
    trace.decision("vote", strategy, end - 1, votes=votes, answer="5", stopped="n_reached")
    completion = sum(c["completion_tokens"] for c in trace.calls)
    job = {
        "id": job_id, "tenant": tenant, "status": "succeeded", "question": "What is 2 + 3?",
        "strategy": params, "budget": {"max_tokens": completion + 5000}, "roles": {}, "seed": 1,
        "priority": "default", "attempts": 1, "created_at": trace.t0, "started_at": trace.t0,
        "finished_at": trace.at(end),
        "result": {"answer": "5", "text": "The answer is 5.", "votes": votes,
                   "budget_exhausted": False, "details": {}},
        "usage": {"calls": len(trace.calls), "prompt_tokens": 38 * len(trace.calls),
                  "completion_tokens": completion, "cost": completion * 2e-6,
                  "live_calls": len(trace.calls), "journal_hits": 0, "wall_s": end / 1000,
                  "by_role": {}},
    }  # fmt: skip
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(insert(Job), [job])
            connection.execute(insert(Span), trace.spans)
            if trace.calls:
                connection.execute(insert(ModelCall), trace.calls)
    finally:
        engine.dispose()
    return job_id
