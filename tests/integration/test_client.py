"""``ponder_client`` against a real stack: uvicorn running the API with the Celery
executor, a ``ponder worker`` process taking jobs from Redis, PostgreSQL, and the
simulator as the model server (the stack of ``test_api_celery``, one per module). Every
call is the client's own HTTP; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from app.api.settings import ApiSettings
from core.simulator.config import Latency, Rule, SimulatorConfig
from core.simulator.server import Simulator
from ponder_client import (
    AsyncPonderClient,
    Event,
    JobFinishedEvent,
    ModelCallEvent,
    PonderAPIError,
    PonderClient,
)
from tests.fixtures.proxy import CuttableProxy
from tests.fixtures.worker import redis_url  # noqa: F401 - the fixture
from tests.integration.test_api_celery import Stack, celery_api, make_key

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
QUESTION = "What is 2 + 3?"
ALTERNATING = Rule(replies=["The answer is 5.", "The answer is 7."])
"""5, 7, 5, 7...: adaptive sampling never stops early, so every allowed sample is drawn."""


def script(*rules: Rule, latency: Latency | None = None) -> SimulatorConfig:
    return SimulatorConfig(
        models=["sim-small", "sim-large"], rules=list(rules), latency=latency or Latency()
    )


def sampled(n: int) -> dict[str, object]:
    """Self-consistency drawing exactly ``n`` samples, one call each, in order."""
    return {"kind": "self_consistency", "n": n, "adaptive": True, "batch_size": 1,
            "min_samples": n}  # fmt: skip


@pytest.fixture(scope="module")
def stack(
    redis_url: str,  # noqa: F811 - the fixture
    pg_database_url: str,
    simulator_server: Simulator,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    keys = {"acme": make_key(pg_database_url, "acme")}
    api = ApiSettings(_env_file=None, sse_poll_min_s=0.02, sse_poll_max_s=0.1)  # type: ignore[call-arg]
    with celery_api(
        broker_url=redis_url,
        database_url=pg_database_url,
        sim_url=simulator_server.url,
        tmp=tmp_path_factory,
        name="client",
        api=api,
    ) as (url, worker):
        yield Stack(url, keys, worker)


@pytest.fixture
def ponder(stack: Stack, simulator: Simulator) -> Iterator[PonderClient]:
    with PonderClient(stack.url, api_key=stack.keys["acme"]) as client:
        yield client


def states(events: list[Event]) -> list[tuple[str | None, bool]]:
    """(span id, closed) of each span event: what must never repeat."""
    return [
        (e.span_id, getattr(e, "end_ts", None) is not None) for e in events if e.span_id is not None
    ]


def test_submit_wait_answer(ponder: PonderClient, simulator: Simulator) -> None:
    simulator.set_config(script(Rule(replies=["2 + 3 = 5. The answer is 5."])))
    job = ponder.submit(QUESTION, strategy={"kind": "direct"}, seed=7, idempotency_key="c-1")
    assert job.status == "queued" and not job.done
    done = ponder.wait(job.id, timeout=30)
    assert (done.status, done.answer, done.seed) == ("succeeded", "5", 7)
    assert done.usage is not None and done.usage["calls"] == 1
    # The same Idempotency-Key: the same job, not a second run.
    again = ponder.submit(QUESTION, strategy={"kind": "direct"}, seed=7, idempotency_key="c-1")
    assert again.id == job.id and simulator.stats.requests == 1
    assert job.id in [j.id for j in ponder.list_jobs(status="succeeded").items]
    assert "self_consistency" in [s.kind for s in ponder.strategies()]


def test_extra_fields_reach_the_job_body(ponder: PonderClient, simulator: Simulator) -> None:
    """``submit(**fields)``: a conversation instead of a question."""
    simulator.set_config(script(Rule(match="My number is 17", replies=["The answer is 18."])))
    messages = [{"role": "user", "content": "My number is 17. What is it plus one?"}]
    job = ponder.submit(messages=messages, strategy="direct")
    done = ponder.wait(job.id, timeout=30)
    assert (done.status, done.answer) == ("succeeded", "18"), done.error


def test_wait_long_polls_survives_a_drop_and_times_out(
    stack: Stack, ponder: PonderClient, simulator: Simulator
) -> None:
    """``wait`` asks the server to answer when the job ends (``GET ?wait=``), reads no
    event stream, rides out a dropped connection, and gives up at its timeout."""
    simulator.set_config(script(ALTERNATING, latency=Latency(ttft_ms=300)))
    target = urlsplit(stack.url)
    proxy = CuttableProxy((target.hostname or "127.0.0.1", target.port or 80))
    proxy.start()
    sent: list[httpx.Request] = []
    http = httpx.Client(event_hooks={"request": [sent.append]}, timeout=30)
    try:
        via = PonderClient(f"http://127.0.0.1:{proxy.port}", stack.keys["acme"], http_client=http)
        job = ponder.submit(QUESTION, strategy=sampled(4))  # ~1.2 s of calls
        with pytest.raises(TimeoutError):
            via.wait(job.id, timeout=0.2)
        threading.Timer(0.3, proxy.cut).start()  # drops the long poll in flight
        threading.Timer(0.5, proxy.restore).start()
        done = via.wait(job.id, timeout=30)
        assert done.status == "succeeded" and done.usage is not None
        assert done.usage["calls"] == 4
    finally:
        http.close()
        proxy.stop()
    assert sent and all(r.url.path == f"/v1/jobs/{job.id}" for r in sent)
    assert all(0 < float(r.url.params["wait"]) <= 20 for r in sent)
    # The timed-out poll, the one cut under it, its retry: no polling loop.
    assert 3 <= len(sent) <= 6


def test_events_resume_after_a_dropped_connection(
    stack: Stack, ponder: PonderClient, simulator: Simulator
) -> None:
    # Four calls of ~300 ms each: the stream is cut while the job runs.
    simulator.set_config(script(ALTERNATING, latency=Latency(ttft_ms=300)))
    job = ponder.submit(QUESTION, strategy=sampled(4))
    target = urlsplit(stack.url)
    proxy = CuttableProxy((target.hostname or "127.0.0.1", target.port or 80))
    proxy.start()
    streams: list[httpx.Request] = []
    http = httpx.Client(event_hooks={"request": [streams.append]}, timeout=30)
    received: list[Event] = []
    try:
        via = PonderClient(f"http://127.0.0.1:{proxy.port}", stack.keys["acme"], http_client=http)
        for event in via.events(job.id):
            received.append(event)
            if len(received) == 2:
                proxy.cut()  # the connection drops under the client...
                proxy.restore()  # ...and the next one gets through
    finally:
        http.close()
        proxy.stop()

    assert len(streams) >= 2, "the stream was never reconnected"
    resumed_after = streams[1].headers.get("Last-Event-ID")
    assert resumed_after is not None and int(resumed_after) >= 2
    finished = received[-1]
    assert isinstance(finished, JobFinishedEvent) and finished.status == "succeeded"
    assert finished.result is not None and finished.result["votes"] == {"5": 2, "7": 2}
    # Nothing twice, nothing missing: every span of the trace, each state once.
    assert len(states(received)) == len(set(states(received)))
    trace = ponder.trace(job.id)
    assert {e.span_id for e in received if e.span_id} == {e.span_id for e in trace.events}
    assert set(states(trace.events)) <= set(states(received))
    calls = [e for e in received if isinstance(e, ModelCallEvent)]
    assert [e.seq for e in calls] == sorted({e.seq for e in calls}) and len(calls) == 4


class BreakOnce(httpx.BaseTransport):
    """Real HTTP, except that the first event stream breaks right after the message in
    which ``marker`` appears for the ``times``-th time: a drop at a chosen point."""

    def __init__(self, marker: bytes, times: int) -> None:
        self.inner = httpx.HTTPTransport()
        self.marker, self.times = marker, times
        self.broken = False
        self.dropped: list[bool] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if self.broken or not request.url.path.endswith("/events"):
            return response
        self.broken = True
        assert isinstance(response.stream, httpx.SyncByteStream)
        stream = _Breaking(response.stream, self.marker, self.times, self.dropped)
        return httpx.Response(response.status_code, headers=response.headers, stream=stream)

    def close(self) -> None:
        self.inner.close()


class _Breaking(httpx.SyncByteStream):
    def __init__(
        self, inner: httpx.SyncByteStream, marker: bytes, times: int, dropped: list[bool]
    ) -> None:
        self.inner, self.marker, self.times, self.dropped = inner, marker, times, dropped

    def __iter__(self) -> Iterator[bytes]:
        buffer, seen = b"", 0
        for chunk in self.inner:
            buffer += chunk
            while b"\n\n" in buffer:
                message, buffer = buffer.split(b"\n\n", 1)
                yield message + b"\n\n"
                seen += self.marker in message
                if seen == self.times:
                    self.dropped.append(True)
                    raise httpx.ReadError("connection dropped by the test")

    def close(self) -> None:
        self.inner.close()


def test_a_drop_after_the_last_close_repeats_no_state(
    stack: Stack, ponder: PonderClient, simulator: Simulator
) -> None:
    """After a resume the server re-sends the state of containers at or before
    Last-Event-ID (app.api.sse): for a finished job, the job's and the strategy's closes,
    which the client has already yielded and must not yield again."""
    simulator.set_config(script(ALTERNATING))
    job = ponder.wait(ponder.submit(QUESTION, strategy=sampled(2)).id, timeout=30)
    whole = list(ponder.events(job.id))
    # A finished job's spans come closed, in seq order: cut after the strategy's.
    transport = BreakOnce(b"event: strategy\n", times=1)
    with (
        httpx.Client(transport=transport, timeout=30) as http,
        PonderClient(stack.url, stack.keys["acme"], http_client=http) as broken,
    ):
        received = list(broken.events(job.id))
    assert transport.dropped == [True]
    assert [(e.type, e.seq) for e in received] == [(e.type, e.seq) for e in whole]
    assert len(states(received)) == len(set(states(received)))


def test_cancel_a_running_job(ponder: PonderClient, simulator: Simulator) -> None:
    simulator.set_config(script(ALTERNATING, latency=Latency(ttft_ms=300)))
    job = ponder.submit(QUESTION, strategy=sampled(20))
    finished = None
    for event in ponder.events(job.id):
        if isinstance(event, ModelCallEvent) and finished is None:
            assert ponder.cancel(job.id).id == job.id  # after the first call, mid-run
        if isinstance(event, JobFinishedEvent):
            finished = event
    assert finished is not None and finished.status == "cancelled"
    assert ponder.wait(job.id, timeout=30).status == "cancelled"
    assert 1 <= ponder.trace(job.id).journal.entries < 20
    assert ponder.cancel(job.id).status == "cancelled"  # again: not an error


def test_replay_strict_fork_and_diff(ponder: PonderClient, simulator: Simulator) -> None:
    simulator.set_config(script(ALTERNATING))
    parent = ponder.wait(ponder.submit(QUESTION, strategy=sampled(3)).id, timeout=30)
    assert parent.result is not None and parent.result["votes"] == {"5": 2, "7": 1}
    assert simulator.stats.requests == 3

    replayed = ponder.wait(ponder.replay(parent.id, mode="strict").id, timeout=30)
    assert replayed.status == "succeeded" and replayed.result == parent.result
    assert (replayed.parent_job_id, replayed.replay_mode) == (parent.id, "strict")
    assert simulator.stats.requests == 3  # zero model calls
    same = ponder.diff(parent.id, replayed.id)
    assert same.identical and same.first_divergence is None

    fork = ponder.fork(parent.id, at=1, strategy={"n": 5, "min_samples": 5})
    forked = ponder.wait(fork.id, timeout=30)
    assert (forked.status, forked.fork_point) == ("succeeded", 1)
    assert forked.result is not None and forked.result["votes"] == {"5": 3, "7": 2}
    assert simulator.stats.requests - 3 == 4  # call 1 from the journal, 2..5 live
    changed = ponder.diff(parent.id, forked.id)
    assert not changed.identical and changed.deltas.calls == 2
    assert changed.answers == ("5", "5")


def test_presets_round_trip(ponder: PonderClient, simulator: Simulator) -> None:
    simulator.set_config(script(ALTERNATING))
    made = ponder.put_preset("three-votes", sampled(3), description="for the client test")
    assert made.model == "ponder/three-votes" and made.spec["n"] == 3
    assert ponder.preset("three-votes").description == "for the client test"
    assert "three-votes" in [p.name for p in ponder.presets()]
    job = ponder.wait(ponder.submit(QUESTION, strategy={"preset": "three-votes"}).id, timeout=30)
    assert job.result is not None and job.result["votes"] == {"5": 2, "7": 1}
    ponder.delete_preset("three-votes")
    with pytest.raises(PonderAPIError) as gone:
        ponder.preset("three-votes")
    assert (gone.value.status, gone.value.field) == (404, "name")


def test_api_errors_name_the_field(stack: Stack, ponder: PonderClient) -> None:
    with pytest.raises(PonderAPIError) as bad:
        ponder.submit(QUESTION, strategy={"kind": "self_consistency", "n": 0})
    error = bad.value
    assert (error.status, error.code, error.field) == (422, "invalid_input", "strategy.n")
    assert error.request_id and "strategy.n" in str(error)
    with pytest.raises(PonderAPIError) as typo:
        ponder.submit(QUESTION, budjet={"max_tokens": 10})
    assert (typo.value.status, typo.value.field) == (422, "budjet")
    with pytest.raises(PonderAPIError) as missing:
        ponder.get("0" * 32)
    assert (missing.value.status, missing.value.code) == (404, "not_found")
    with PonderClient(stack.url, api_key="pk_wrong") as wrong, pytest.raises(PonderAPIError) as e:
        wrong.strategies()
    assert (e.value.status, e.value.code) == (401, "unauthorized")


async def test_async_submit_wait_events(stack: Stack, simulator: Simulator) -> None:
    simulator.set_config(script(ALTERNATING, latency=Latency(ttft_ms=50)))
    async with AsyncPonderClient(stack.url, api_key=stack.keys["acme"]) as ponder:
        job = await ponder.submit(QUESTION, strategy=sampled(3), seed=3)
        received = [event async for event in ponder.events(job.id)]
        done = await ponder.wait(job.id, timeout=30)
        trace = await ponder.trace(job.id)
        other = await asyncio.gather(*(ponder.get(job.id) for _ in range(3)))
        with pytest.raises(PonderAPIError) as bad:
            await ponder.submit(QUESTION, strategy={"kind": "nope"})
    assert (done.status, done.answer) == ("succeeded", "5")
    assert isinstance(received[-1], JobFinishedEvent) and received[-1].result == done.result
    assert len([e for e in received if isinstance(e, ModelCallEvent)]) == 3
    assert {e.span_id for e in received if e.span_id} == {e.span_id for e in trace.events}
    assert {o.status for o in other} == {"succeeded"}
    assert (bad.value.status, bad.value.field) == (422, "strategy.kind")


def test_eval_with_url_runs_on_the_server(
    stack: Stack, ponder: PonderClient, simulator: Simulator, tmp_path: Path
) -> None:
    simulator.set_config(
        script(
            Rule(match=r"2 \+ 3", replies=["The answer is 5."]),
            Rule(match="10 - 4", replies=["The answer is 7."]),
        )
    )
    dataset = tmp_path / "tiny.jsonl"
    problems = [
        {"id": "p1", "question": "What is 2 + 3?", "answer": "5"},
        {"id": "p2", "question": "What is 10 - 4?", "answer": "6"},
    ]
    dataset.write_text("".join(json.dumps(p) + "\n" for p in problems))
    # The tenant's stored preset, resolved on the server: an arm by its name.
    ponder.put_preset("url-short", {"kind": "direct", "max_tokens": 48})
    env = {k: v for k, v in os.environ.items() if not k.startswith("PONDER_")}
    env["PONDER_DATA_DIR"] = str(tmp_path / "data")
    ran = subprocess.run(
        [sys.executable, "-m", "app.cli", "eval", "--url", stack.url,
         "--api-key", stack.keys["acme"], "--dataset", str(dataset),
         "--strategy", "url-short", "--out", str(tmp_path / "out")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert "50.0%" in ran.stdout
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    (arm,) = results["strategies"]
    assert (arm["label"], arm["params"]["kind"], arm["params"]["max_tokens"]) == (
        "url-short", "direct", 48,
    )  # fmt: skip
    rows = results["rows"]
    assert [(r["problem_id"], r["answer"], r["correct"]) for r in rows] == [
        ("p1", "5", True),
        ("p2", "7", False),
    ]
    # Each row is a job on the server, readable by the same tenant.
    assert [ponder.get(r["job_id"]).answer for r in rows] == ["5", "7"]
    assert simulator.stats.requests == 2


PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)


@pytest.mark.parametrize("doc", ["README.md", "docs/client.md"])
def test_the_documented_examples_run_and_print_what_they_say(
    doc: str, stack: Stack, simulator: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every ```python block of docs/client.md, and the README's client example, run in
    order in one namespace against this stack; each ``print(...)  # X`` must print X."""
    simulator.set_config(script(Rule(replies=["The answer is 51."])))
    blocks = PYTHON_BLOCK.findall((ROOT / doc).read_text())
    blocks = [b for b in blocks if doc != "README.md" or "ponder_client" in b]
    assert blocks
    namespace: dict[str, object] = {"KEY": stack.keys["acme"]}
    for code in blocks:
        code = code.replace("http://127.0.0.1:8000", stack.url)
        code = code.replace('"KEY"', repr(stack.keys["acme"]))
        capsys.readouterr()
        exec(compile(code, doc, "exec"), namespace)
        printed = capsys.readouterr().out.splitlines()
        for expected in re.findall(r"print\(.*\)  # (.+)$", code, re.M):
            assert expected in printed, (expected, printed)
