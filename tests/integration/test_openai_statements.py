"""What one OpenAI-face request costs the database on the interactive lane, counted.

A ``ponder/direct`` chat completion that the API process runs itself
(``app.api.interactive``) touches the database in two places: the request path (write
the job, answer) and the job's run (claim, journal, trace, finish: ``core.runner``,
pinned on its own by ``test_job_transactions.py``). Every statement is a round trip and
every commit a WAL record, so the request path's statements are pinned here, on SQLite
and PostgreSQL, with the run's commits counted beside them but kept apart: a statement
added to either shows up as that side's.

Statements are told apart by who runs them: the run's (``Runner.run`` and the threads and
tasks it starts), the job monitor's (its cancel poll and heartbeat thread, per interval,
not per request: left out), and the rest, the request path's.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session

from app.api.executor import CeleryExecutor, JobRun
from app.api.interactive import LaneExecutor
from app.api.main import create_app
from app.api.openai import completions
from app.api.openai.finished import ran_here
from app.api.settings import ApiSettings, TenantLimits
from core.db.engine import make_engine
from core.db.models import Job, utcnow
from core.runner import Runner, RunOutcome
from core.simulator.config import Rule
from core.simulator.server import Simulator
from tests.fixtures.api import ApiServer
from tests.fixtures.runtime import simulator_settings
from tests.integration.test_worker import script

CHAT = {"model": "ponder/direct", "messages": [{"role": "user", "content": "2+3?"}]}

_in_run: contextvars.ContextVar[bool] = contextvars.ContextVar("in_run", default=False)
"""True inside ``Runner.run``; ``asyncio.to_thread`` and new tasks carry it along."""


def _broker_down(job_id: str, **_: Any) -> None:
    raise ConnectionError("no broker in this test: every job here must take the lane")


@dataclass
class Statements:
    """SQL statements and commits, ``(engine, text)``, by the side that issued them."""

    request: list[tuple[str, str]] = field(default_factory=list)
    run: list[tuple[str, str]] = field(default_factory=list)
    monitor: list[tuple[str, str]] = field(default_factory=list)

    def add(self, engine: str, text: str) -> None:
        self._side().append((engine, " ".join(text.split())[:72]))

    def _side(self) -> list[tuple[str, str]]:
        if threading.current_thread().name == "job-heartbeat":
            return self.monitor
        try:
            task = asyncio.current_task()
        except RuntimeError:  # a thread with no event loop: to_thread carries _in_run
            task = None
        if task is not None and task.get_name() == "job-monitor":
            return self.monitor
        return self.run if _in_run.get() else self.request


@contextmanager
def counting(engines: dict[str, Engine]) -> Iterator[Statements]:
    seen = Statements()
    hooks: list[tuple[Engine, str, Any]] = []
    for name, engine in engines.items():

        def on_statement(conn: Any, _cursor: Any, text: str, *_: Any, name: str = name) -> None:
            seen.add(name, text)
            # A write in autocommit mode (the run's claim: core.db.runs) commits by itself.
            autocommit = conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
            if autocommit and not text.lstrip().upper().startswith("SELECT"):
                seen.add(name, "COMMIT")

        def on_commit(_c: Any, name: str = name) -> None:
            seen.add(name, "COMMIT")

        for kind, hook in (("before_cursor_execute", on_statement), ("commit", on_commit)):
            event.listen(engine, kind, hook)
            hooks.append((engine, kind, hook))
    try:
        yield seen
    finally:
        for engine, kind, hook in hooks:
            event.remove(engine, kind, hook)


@pytest.fixture
def lane(
    simulator: Simulator, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[httpx.Client, Any]]:
    """A client of an API whose chat jobs run on its lane, and the app's state."""
    run = Runner.run

    async def marked_run(self: Runner, *args: Any, **kwargs: Any) -> RunOutcome:
        _in_run.set(True)  # in the run's own task: the request's context is a copy
        return await run(self, *args, **kwargs)

    monkeypatch.setattr(Runner, "run", marked_run)
    settings = simulator_settings(simulator.url, database_url, tmp_path)
    # Per interval, not per request, so out of a per-request count: the "no key exists"
    # answer (cached key_cache_s) and the jobs-in-flight count (at most one a second).
    api = ApiSettings(  # type: ignore[call-arg]
        _env_file=None, key_cache_s=3600, limits=TenantLimits(max_jobs_in_flight=None)
    )
    executor = LaneExecutor(CeleryExecutor(enqueue=_broker_down), max_jobs=2)
    app = create_app(settings, executor=executor, api_settings=api)
    with ApiServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        # The first request fills the process's caches (key existence, sandbox probe).
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
        yield client, app.state.ponder


def test_a_direct_chat_completion_on_the_lane_reads_nothing_after_its_run(
    lane: tuple[httpx.Client, Any], simulator: Simulator
) -> None:
    client, state = lane
    simulator.set_config(script(Rule(replies=["The answer is 5."])))
    engines = {"async": state.engine.sync_engine, "trace": state.sync_engine}
    with counting(engines) as seen:
        answer = client.post("/v1/chat/completions", json=CHAT)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "The answer is 5."
    assert answer.json()["usage"]["completion_tokens"] > 0
    report = f"request path: {seen.request}\nrun: {seen.run}"
    # The request path: one transaction that writes the job. Nothing after the run: the
    # answer is the run's own outcome, not the row read back.
    # The OpenAI face keys every job (openai-retry:<fingerprint>:<nonce>,
    # app.api.openai.retries) with a nonce it just drew: no lookup before the insert.
    assert [text.split(" ")[0] for _, text in seen.request] == [
        "INSERT",  # the job row
        "COMMIT",  # before the lane may run it (a worker must see it if this dies)
    ], report
    # The run's, counted apart: it commits as a worker's run does (test_job_transactions.py
    # pins that on its own): the claim, then the outcome with the journal row and trace.
    assert sum(text == "COMMIT" for _, text in seen.run) == 2, report


def test_a_preset_chat_completion_reads_its_preset_once(
    lane: tuple[httpx.Client, Any], simulator: Simulator
) -> None:
    client, state = lane
    simulator.set_config(script(Rule(replies=["The answer is 5."])))
    saved = client.put("/v1/presets/short", json={"spec": {"kind": "direct", "max_tokens": 32}})
    assert saved.status_code in (200, 201), saved.text
    body = {**CHAT, "model": "ponder/short", "ponder": {"strategy": {"max_tokens": 16}}}
    engines = {"async": state.engine.sync_engine, "trace": state.sync_engine}
    with counting(engines) as seen:
        answer = client.post("/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    report = f"request path: {seen.request}"
    # The preset, read once as its spec (not listed, then looked up again at submit)...
    reads = [text for _, text in seen.request if text.startswith("SELECT")]
    assert len(reads) == 1 and "presets" in reads[0], report
    # ...then the job's one transaction, as for ponder/direct.
    writes = [text.split(" ")[0] for _, text in seen.request if text.split(" ")[0] in
              ("INSERT", "UPDATE", "COMMIT")]  # fmt: skip
    assert writes == ["INSERT", "COMMIT"], report
    # The request's parameters override the preset's, as on POST /v1/jobs.
    strategy = client.get(f"/v1/jobs/{answer.json()['id']}").json()["strategy"]
    assert (strategy["kind"], strategy["max_tokens"]) == ("direct", 16)


# SQLite: PostgreSQL's JSONB reorders a vote's keys in the row (ties then rank apart).
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_lanes_answer_is_the_one_the_row_gives(
    lane: tuple[httpx.Client, Any], simulator: Simulator, database_url: str
) -> None:
    # The response is built from the run's outcome; a job the lane did not run is answered
    # from its row. Both must say the same, votes and usage included.
    simulator.set_config(script(Rule(replies=["The answer is 5.", "It is 6.", "So 5."])))
    client, _ = lane
    body = {**CHAT, "model": "ponder/self_consistency", "ponder": {"strategy": {"n": 3}}}
    answer = client.post("/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            row = session.get(Job, answer.json()["id"])
            assert row is not None and row.status == "succeeded"
            assert answer.json() == completions.completion(row, "ponder/self_consistency", [])
    finally:
        engine.dispose()


# -- when the run's outcome is not the answer, the row is read --------------------------


def _submitted() -> Job:
    return Job(id="j1", status="queued", question="q", strategy={"kind": "direct"},
               conversation=None, created_at=utcnow())  # fmt: skip


async def _ended(value: RunOutcome | BaseException | None) -> JobRun:
    async def run() -> RunOutcome | None:
        if isinstance(value, BaseException):
            raise value
        return value

    task = asyncio.create_task(run())
    await asyncio.wait({task})
    return task


def _outcome(status: str = "succeeded", job_id: str = "j1", **extra: Any) -> RunOutcome:
    outcome = RunOutcome(job_id, status, {"answer": "5"}, {"calls": 1}, None)
    outcome.extra.update(extra)
    return outcome


async def test_a_run_that_saved_the_job_answers_for_it() -> None:
    job = _submitted()
    ended = ran_here(job, await _ended(_outcome()))
    assert ended is not None
    assert (ended.id, ended.status, ended.result, ended.usage) == (
        "j1", "succeeded", {"answer": "5"}, {"calls": 1},
    )  # fmt: skip
    assert ended.created_at == job.created_at


@pytest.mark.parametrize(
    "ending",
    [
        _outcome(lease_lost=True),  # another worker took the job over: its outcome counts
        _outcome("running", skipped="held by worker w2"),  # never ran here
        _outcome("succeeded", skipped="finished"),  # an earlier run's outcome: the row's
        _outcome(job_id="j2"),  # another job's run
        None,  # the run crashed (logged by the executor)
        asyncio.CancelledError(),  # the API is shutting down; a worker resumes the job
    ],
    ids=["lease lost", "held elsewhere", "already finished", "other job", "crashed",
         "cancelled"],
)  # fmt: skip
async def test_any_other_end_of_the_run_is_read_from_the_row(
    ending: RunOutcome | BaseException | None,
) -> None:
    assert ran_here(_submitted(), await _ended(ending)) is None


async def test_a_run_still_going_is_not_an_answer() -> None:
    running = asyncio.create_task(asyncio.sleep(10, result=_outcome()))
    try:
        assert ran_here(_submitted(), running) is None
    finally:
        running.cancel()
