"""The v1 API over a real uvicorn server, real SQLite and PostgreSQL, the simulator as
the model server, and jobs run by the in-process executor."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.api.executor import InProcessExecutor
from app.api.main import create_app
from app.api.settings import ApiSettings
from core.events import EVENT_ADAPTER, Event, JobFinishedEvent, ModelCallEvent
from core.simulator.config import Latency, Rule, SimulatorConfig
from core.simulator.server import Simulator
from strategies.registry import STRATEGIES
from tests.fixtures.api import ApiServer, make_key
from tests.fixtures.runtime import simulator_settings

QUESTION = "What is 2 + 3?"


def script(*rules: Rule, latency: Latency | None = None) -> SimulatorConfig:
    return SimulatorConfig(
        models=["sim-small", "sim-large"], rules=list(rules), latency=latency or Latency()
    )


@pytest.fixture
def api_url(simulator: Simulator, database_url: str, tmp_path: Path) -> Iterator[str]:
    settings = simulator_settings(simulator.url, database_url, tmp_path)
    api = ApiSettings(_env_file=None, sse_poll_min_s=0.02, sse_poll_max_s=0.1)  # type: ignore[call-arg]
    app = create_app(settings, executor=InProcessExecutor(), api_settings=api)
    with ApiServer(app) as server:
        yield server.url


@pytest.fixture
def client(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, timeout=30) as c:
        yield c


def wait_done(client: httpx.Client, job_id: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, f"job still {job['status']}"
        time.sleep(0.02)


def submit(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/jobs", json={"question": QUESTION, "seed": 7, **body})
    assert response.status_code == 202, response.text
    created: dict[str, Any] = response.json()
    return created


def test_submit_poll_result(client: httpx.Client, simulator: Simulator) -> None:
    simulator.set_config(script(Rule(replies=["2 + 3 = 5. The answer is 5."])))
    job = submit(client, strategy={"kind": "direct"})
    assert job["status"] == "queued"
    done = wait_done(client, job["id"])
    assert done["status"] == "succeeded", done
    assert done["result"]["answer"] == "5"
    assert done["usage"]["calls"] == 1
    assert simulator.stats.requests == 1


def test_a_long_poll_answers_once_the_job_is_final(
    client: httpx.Client, simulator: Simulator
) -> None:
    # The model takes 0.4 s; one GET with ``wait`` comes back with the finished job.
    simulator.set_config(script(Rule(replies=["The answer is 5."]), latency=Latency(ttft_ms=400)))
    job = submit(client, strategy={"kind": "direct"})
    done = client.get(f"/v1/jobs/{job['id']}", params={"wait": 20})
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "succeeded" and done.json()["result"]["answer"] == "5"


def test_a_long_poll_that_runs_out_returns_the_job_as_it_is(
    client: httpx.Client, simulator: Simulator
) -> None:
    slow = Latency(ttft_ms=30_000)
    simulator.set_config(script(Rule(replies=["The answer is 5."]), latency=slow))
    job = submit(client, strategy={"kind": "direct"})
    now = client.get(f"/v1/jobs/{job['id']}", params={"wait": 0.3})
    assert now.status_code == 200 and now.json()["status"] in ("queued", "running")
    for wait in (-1, 61, "soon"):
        bad = client.get(f"/v1/jobs/{job['id']}", params={"wait": wait})
        assert (bad.status_code, bad.json()["error"]["field"]) == (422, "wait"), bad.text
    unknown = "0123456789abcdef0123456789abcdef"
    assert client.get(f"/v1/jobs/{unknown}", params={"wait": 1}).status_code == 404
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202


# -- reading jobs ------------------------------------------------------------------


def test_list_filters_and_cursor_pages(client: httpx.Client, simulator: Simulator) -> None:
    simulator.set_config(script(Rule(replies=["The answer is 5."])))
    ids = [submit(client, strategy="direct")["id"] for _ in range(4)]
    ids.append(submit(client, strategy={"kind": "self_consistency", "n": 3})["id"])
    for job_id in ids:
        wait_done(client, job_id)
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/jobs", params=params).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]  # newest first, each exactly once
    direct = client.get("/v1/jobs", params={"strategy": "direct"}).json()["items"]
    assert {j["id"] for j in direct} == set(ids[:4])
    assert client.get("/v1/jobs", params={"status": "queued"}).json()["items"] == []
    created = client.get(f"/v1/jobs/{ids[2]}").json()["created_at"]
    later = client.get("/v1/jobs", params={"created_after": created}).json()["items"]
    assert [j["id"] for j in later] == ids[3:][::-1]


def test_trace_is_typed_events_and_journal(client: httpx.Client, simulator: Simulator) -> None:
    simulator.set_config(script(Rule(replies=["The answer is 5.", "The answer is 7."])))
    job = submit(client, strategy={"kind": "self_consistency", "n": 3})
    wait_done(client, job["id"])
    trace = client.get(f"/v1/jobs/{job['id']}/trace").json()
    events: list[Event] = [EVENT_ADAPTER.validate_python(e) for e in trace["events"]]
    assert [e.type for e in events] == [
        "job",
        "strategy",
        "model_call",
        "decision",
        "decision",
        "decision",
        "decision",
    ]
    assert [e.seq for e in events] == list(range(1, 8))
    call = events[2]
    assert isinstance(call, ModelCallEvent)
    assert (call.role, call.model, call.n, call.journal) == ("small", "sim-small", 3, "miss")
    assert call.completion_tokens > 0 and call.parent_span_id == events[1].span_id
    assert events[1].status == "ok" and events[1].answer == "5"  # type: ignore[union-attr]
    assert trace["journal"]["entries"] == trace["journal"]["recorded"] == 1
    assert trace["journal"]["completion_tokens"] == call.completion_tokens


# -- live events -------------------------------------------------------------------


def read_sse(response: httpx.Response) -> Iterator[tuple[str, str, str, float]]:
    """(event, id, data, arrival time) per message."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if "data" in fields:
                at = time.monotonic()
                yield fields.get("event", ""), fields.get("id", ""), fields["data"], at
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value


def test_events_stream_live_in_order_and_resume(client: httpx.Client, simulator: Simulator) -> None:
    # Four sequential calls of ~150 ms each: the stream must deliver them as they happen.
    simulator.set_config(script(Rule(replies=["The answer is 5."]), latency=Latency(ttft_ms=150)))
    spec = {"kind": "self_consistency", "n": 6, "adaptive": True, "batch_size": 1}
    job = submit(client, strategy=spec)
    received: list[tuple[Event, str, float]] = []
    with client.stream("GET", f"/v1/jobs/{job['id']}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for kind, event_id, data, at in read_sse(response):
            event = EVENT_ADAPTER.validate_json(data)
            assert event.type == kind
            received.append((event, event_id, at))
    finished = received[-1][0]
    assert isinstance(finished, JobFinishedEvent) and finished.status == "succeeded"
    assert finished.result is not None and finished.result["answer"] == "5"
    first_sends = [e for e, _, _ in received if e.type not in ("job_finished",)]
    seqs: list[int] = []
    for event in first_sends:
        if event.seq not in seqs:
            seqs.append(event.seq)
    assert seqs == list(range(1, len(seqs) + 1))  # every span, in seq order, none skipped
    calls = [(e, at) for e, _, at in received if isinstance(e, ModelCallEvent)]
    assert len(calls) == 4
    # Live: the first call reached the client well before the job ended.
    assert received[-1][2] - calls[0][1] > 0.3
    # Containers were sent open, then again closed.
    strategy_sends = [e for e, _, _ in received if e.type == "strategy"]
    assert [s.end_ts is None for s in strategy_sends] == [True, False]

    resume_at = calls[1][0].seq
    with client.stream(
        "GET", f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": str(resume_at)}
    ) as response:
        resumed = [EVENT_ADAPTER.validate_json(d) for _, _, d, _ in read_sse(response)]
    spans_after = [e.seq for e in resumed if e.type not in ("job", "strategy", "job_finished")]
    assert spans_after == [s for s in seqs if s > resume_at and s > 2]
    assert resumed[-1].type == "job_finished"


# -- replay, fork, diff ----------------------------------------------------------------


def test_strict_replay_reproduces_with_zero_model_calls(
    client: httpx.Client, simulator: Simulator
) -> None:
    simulator.set_config(script(Rule(replies=["The answer is 5.", "The answer is 7."])))
    parent = submit(client, strategy={"kind": "self_consistency", "n": 5})
    parent_done = wait_done(client, parent["id"])
    before = simulator.stats.requests
    child = client.post(f"/v1/jobs/{parent['id']}/replay", json={"mode": "strict"})
    assert child.status_code == 202, child.text
    child_done = wait_done(client, child.json()["id"])
    assert simulator.stats.requests == before
    assert child_done["parent_job_id"] == parent["id"] and child_done["replay_mode"] == "strict"
    assert child_done["result"] == parent_done["result"]
    diff = client.get(f"/v1/jobs/{parent['id']}/diff/{child_done['id']}").json()
    assert diff["identical"] is True and diff["first_divergence"] is None
    assert diff["deltas"]["live_calls"] == -1 and diff["deltas"]["completion_tokens"] == 0


def test_fork_from_step_changes_the_result_and_diff_finds_it(
    client: httpx.Client, simulator: Simulator
) -> None:
    simulator.set_config(script(Rule(replies=["The answer is 5.", "The answer is 7."])))
    spec = {"kind": "self_consistency", "n": 3, "adaptive": True, "batch_size": 1}
    parent = submit(client, strategy=spec)
    assert wait_done(client, parent["id"])["result"]["votes"] == {"5": 2, "7": 1}
    # From now on the model says 7: keep the parent's first two calls (5, 7), allow
    # up to 5 samples, and let the rest go live.
    simulator.set_config(script(Rule(replies=["The answer is 7."])))
    body = {"mode": "live", "fork_from": 2, "strategy": {"n": 5}}
    child = client.post(f"/v1/jobs/{parent['id']}/replay", json=body).json()
    done = wait_done(client, child["id"])
    assert done["fork_point"] == 2
    assert done["result"]["answer"] == "7"
    assert done["result"]["votes"] == {"7": 3, "5": 1}
    assert simulator.stats.requests == 2  # calls 3 and 4; calls 1 and 2 came from the journal
    diff = client.get(f"/v1/jobs/{parent['id']}/diff/{child['id']}").json()
    first = diff["first_divergence"]
    assert (first["index"], first["reason"], first["differences"]) == (2, "response", ["choices"])
    assert first["a"]["texts"] == ["The answer is 5."]
    assert first["b"]["texts"] == ["The answer is 7."]
    assert [c["same_request"] for c in diff["calls"]] == [True, True, True]
    assert diff["deltas"]["calls"] == 1 and diff["answers"] == ["5", "7"]


def test_role_override_fork_diverges_on_the_request(
    client: httpx.Client, simulator: Simulator
) -> None:
    simulator.set_config(
        script(
            Rule(model="sim-large", replies=["The answer is 9."]),
            Rule(replies=["The answer is 5."]),
        )
    )
    parent = submit(client, strategy="direct")
    wait_done(client, parent["id"])
    body = {"mode": "live", "fork_from": 0, "roles": {"small": "large"}}
    child = client.post(f"/v1/jobs/{parent['id']}/replay", json=body).json()
    assert wait_done(client, child["id"])["result"]["answer"] == "9"
    first = client.get(f"/v1/jobs/{parent['id']}/diff/{child['id']}").json()["first_divergence"]
    assert (first["index"], first["reason"]) == (0, "request")
    assert (first["a"]["model"], first["b"]["model"]) == ("sim-small", "sim-large")


def test_cancel_stops_a_running_job_with_its_partial_trace(
    client: httpx.Client, simulator: Simulator
) -> None:
    simulator.set_config(script(Rule(replies=["The answer is 5."]), latency=Latency(ttft_ms=300)))
    spec = {
        "kind": "self_consistency",
        "n": 20,
        "adaptive": True,
        "batch_size": 1,
        "min_samples": 20,
    }
    job = submit(client, strategy=spec)
    deadline = time.monotonic() + 10
    while not client.get(f"/v1/jobs/{job['id']}/trace").json()["journal"]["entries"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    started = time.monotonic()
    response = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 202, response.text
    done = wait_done(client, job["id"])
    assert done["status"] == "cancelled" and time.monotonic() - started < 2
    calls = client.get(f"/v1/jobs/{job['id']}/trace").json()["journal"]["entries"]
    assert 1 <= calls < 20
    # Cancelling again, or a finished job, is not an error.
    assert client.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"


# -- tenants -----------------------------------------------------------------------


def test_tenants_see_only_their_own_jobs(
    api_url: str, database_url: str, simulator: Simulator
) -> None:
    simulator.set_config(script(Rule(replies=["The answer is 5."])))
    with httpx.Client(base_url=api_url, timeout=30) as anonymous:
        # No keys yet: open, as tenant "default" (the serve command binds 127.0.0.1).
        default_job = submit(anonymous, strategy="direct")["id"]
    acme, globex = make_key(database_url, "acme"), make_key(database_url, "globex")
    a = httpx.Client(base_url=api_url, timeout=30, headers={"Authorization": f"Bearer {acme}"})
    b = httpx.Client(base_url=api_url, timeout=30, headers={"Authorization": f"Bearer {globex}"})
    with a, b, httpx.Client(base_url=api_url, timeout=30) as anonymous:
        job_a = submit(a, strategy="direct")["id"]
        job_b = submit(b, strategy="direct")["id"]
        wait_done(a, job_a)
        wait_done(b, job_b)
        # Now that keys exist, a request without one (or with a wrong one) is refused.
        for path in ("/v1/jobs", f"/v1/jobs/{job_a}", "/v1/strategies", "/v1/models"):
            denied = anonymous.get(path)
            assert denied.status_code == 401, path
            assert denied.headers["www-authenticate"] == "Bearer"
        wrong = anonymous.get("/v1/jobs", headers={"Authorization": "Bearer pk_nope"})
        assert wrong.json()["error"]["code"] == "unauthorized"
        assert anonymous.get("/healthz").status_code == 200

        assert [j["id"] for j in a.get("/v1/jobs").json()["items"]] == [job_a]
        assert [j["id"] for j in b.get("/v1/jobs").json()["items"]] == [job_b]
        for other in (job_a, default_job):
            for method, path in [
                ("GET", f"/v1/jobs/{other}"),
                ("GET", f"/v1/jobs/{other}/trace"),
                ("GET", f"/v1/jobs/{other}/events"),
                ("POST", f"/v1/jobs/{other}/cancel"),
                ("POST", f"/v1/jobs/{other}/replay"),
                ("GET", f"/v1/jobs/{other}/diff/{job_b}"),
                ("GET", f"/v1/jobs/{job_b}/diff/{other}"),
            ]:
                response = b.request(method, path)
                assert response.status_code == 404, (method, path, response.text)
                assert response.json()["error"]["code"] == "not_found"
        assert a.get(f"/v1/jobs/{job_a}").status_code == 200
        # Idempotency keys are per tenant, too.
        one = a.post("/v1/jobs", json={"question": QUESTION}, headers={"Idempotency-Key": "k"})
        two = b.post("/v1/jobs", json={"question": QUESTION}, headers={"Idempotency-Key": "k"})
        assert one.status_code == two.status_code == 202
        assert one.json()["id"] != two.json()["id"]


def test_idempotent_submit(client: httpx.Client, simulator: Simulator) -> None:
    body = {"question": QUESTION, "strategy": "direct", "seed": 1}
    first = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "abc"})
    assert first.status_code == 202
    # The same request spelled differently is the same request.
    again = client.post(
        "/v1/jobs",
        json={**body, "strategy": {"kind": "direct"}, "question": f"  {QUESTION} "},
        headers={"Idempotency-Key": "abc"},
    )
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    conflict = client.post("/v1/jobs", json={**body, "seed": 2}, headers={"Idempotency-Key": "abc"})
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "idempotency_conflict"
    assert conflict.json()["error"]["job_id"] == first.json()["id"]
    # Racing retries of one request make one job.
    from concurrent.futures import ThreadPoolExecutor

    def post(_: int) -> httpx.Response:
        return client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "race"})

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, range(8)))
    assert sorted(r.status_code for r in responses).count(202) == 1
    assert len({r.json()["id"] for r in responses}) == 1
    wait_done(client, first.json()["id"])


# -- bad input ---------------------------------------------------------------------

LONG = "x" * 100_001
BAD_SUBMITS: list[tuple[Any, str]] = [
    ({}, "question"),
    ({"question": ""}, "question"),
    ({"question": "   "}, "question"),
    ({"question": 123}, "question"),
    ({"question": None}, "question"),
    ({"question": LONG}, "question"),
    ({"question": "q", "strategy": {"kind": "nope"}}, "strategy.kind"),
    ({"question": "q", "strategy": "nope"}, "strategy.kind"),
    ({"question": "q", "strategy": {"n": 3}}, "strategy.kind"),
    ({"question": "q", "strategy": {"kind": "self_consistency", "n": 0}}, "strategy.n"),
    ({"question": "q", "strategy": {"kind": "self_consistency", "n": "x"}}, "strategy.n"),
    ({"question": "q", "strategy": {"kind": "self_consistency", "n": 10_000}}, "strategy.n"),
    ({"question": "q", "strategy": {"kind": "direct", "bogus": 1}}, "strategy.bogus"),
    ({"question": "q", "strategy": {"kind": "direct", "temperature": -1}}, "strategy.temperature"),
    ({"question": "q", "strategy": []}, "strategy"),
    ({"question": "q", "strategy": 5}, "strategy"),
    ({"question": "q", "budget": {"max_tokens": 0}}, "budget.max_tokens"),
    ({"question": "q", "budget": {"max_cost": -1.0}}, "budget.max_cost"),
    ({"question": "q", "budget": {"tokens": 5}}, "budget.tokens"),
    ({"question": "q", "budget": "lots"}, "budget"),
    ({"question": "q", "budget": {"role_tokens": {"small": "x"}}}, "budget.role_tokens.small"),
    ({"question": "q", "roles": {"small": "http://10.0.0.1:8000"}}, "roles.small"),
    ({"question": "q", "roles": {"small": "nope"}}, "roles.small"),
    ({"question": "q", "roles": {"small": 5}}, "roles.small"),
    ({"question": "q", "roles": ["small"]}, "roles"),
    ({"question": "q", "seed": -1}, "seed"),
    ({"question": "q", "seed": "x"}, "seed"),
    ({"question": "q", "seed": 2**64}, "seed"),
    ({"question": "q", "priority": "urgent"}, "priority"),
    ({"question": "q", "budjet": {}}, "budjet"),
    ([], "body"),
    ("question", "body"),
]


@pytest.mark.parametrize(("body", "field"), BAD_SUBMITS, ids=[f for _, f in BAD_SUBMITS])
def test_bad_submissions_are_422_naming_the_field(
    sqlite_client: httpx.Client, body: Any, field: str
) -> None:
    response = sqlite_client.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field, error
    assert error["code"] in ("invalid_input", "unknown_strategy")
    if field == "strategy.kind":
        assert error["valid"] == sorted(STRATEGIES)
        assert ", ".join(sorted(STRATEGIES)) in error["message"]
    assert sqlite_client.get("/v1/jobs").json()["items"] == []  # nothing half-written


def test_other_bad_requests_are_422_naming_the_field(sqlite_client: httpx.Client) -> None:
    c = sqlite_client
    not_json = c.post("/v1/jobs", content=b"{nope", headers={"content-type": "application/json"})
    assert not_json.status_code == 422 and not_json.json()["error"]["field"].startswith("body")
    long_key = c.post("/v1/jobs", json={"question": "q"}, headers={"Idempotency-Key": "k" * 200})
    assert long_key.json()["error"]["field"] == "Idempotency-Key"
    cases: list[tuple[dict[str, str | int], str]] = [
        ({"status": "done"}, "status"),
        ({"limit": 0}, "limit"),
        ({"created_after": "yesterday"}, "created_after"),
        ({"cursor": "garbage!"}, "cursor"),
        ({"strategy": "nope"}, "strategy"),
    ]
    for params, field in cases:
        response = c.get("/v1/jobs", params=params)
        assert (response.status_code, response.json()["error"]["field"]) == (422, field)
    job = c.post("/v1/jobs", json={"question": QUESTION, "strategy": "direct"}).json()
    wait_done(c, job["id"])
    for body, field in [
        ({"mode": "fast"}, "mode"),
        ({"fork_from": -1}, "fork_from"),
        ({"mode": "live", "fork_from": 99}, "fork_from"),
        ({"strategy": {"temperature": 9}}, "strategy.temperature"),
        ({"roles": {"small": "large"}}, "roles"),
        ({"mode": "live", "roles": {"small": "http://x"}}, "roles.small"),
        ({"extra": 1}, "extra"),
    ]:
        response = c.post(f"/v1/jobs/{job['id']}/replay", json=body)
        assert (response.status_code, response.json()["error"]["field"]) == (422, field), body
    assert c.get("/v1/jobs/nope").status_code == 404


def test_oversized_bodies_are_413(sqlite_client: httpx.Client) -> None:
    big = {"question": "x" * (1024 * 1024)}
    response = sqlite_client.post("/v1/jobs", json=big)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"question": "'
        for _ in range(80):
            yield b"y" * 16384
        yield b'"}'

    streamed = sqlite_client.post(
        "/v1/jobs", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413
    assert sqlite_client.get("/v1/jobs").json()["items"] == []


def random_value(rng: Any, depth: int = 0) -> Any:
    choices: list[Any] = [
        None,
        True,
        -1,
        0,
        1,
        3,
        2**70,
        1.5,
        float("-0.0"),
        "",
        "x",
        "ü" * 3,
        "small",
        "http://127.0.0.1:1",
        "direct",
        "self_consistency",
        "\x00",
    ]
    if depth < 2:
        choices += [[random_value(rng, depth + 1)], {"k": random_value(rng, depth + 1)}]
    return rng.choice(choices)


GOOD: dict[str, list[Any]] = {
    "n": [1, 3, 8],
    "role": ["small", "large"],
    "temperature": [0.0, 0.7],
    "top_p": [0.9],
    "max_tokens": [16, 64],
    "adaptive": [True, False],
    "batch_size": [1, 2],
    "min_samples": [1],
    "confidence": [0.9],
    "system": ["Be brief."],
    "max_calls": [1, 5],
    "max_seconds": [5.0],
    "max_cost": [1.0],
    "min_tokens": [8],
    "role_tokens": [{"small": 100}],
}


def value_for(rng: Any, name: str) -> Any:
    # Mostly plausible values, so that fuzzing reaches the deep validators too.
    if name in GOOD and rng.random() < 0.7:
        return rng.choice(GOOD[name])
    return random_value(rng)


def random_body(rng: Any) -> Any:
    params = [
        "n",
        "role",
        "temperature",
        "top_p",
        "max_tokens",
        "adaptive",
        "batch_size",
        "min_samples",
        "confidence",
        "system",
        "bogus",
    ]
    budget = [
        "max_tokens",
        "max_calls",
        "max_seconds",
        "max_cost",
        "role_tokens",
        "min_tokens",
        "bogus",
    ]
    body: dict[str, Any] = {}
    if rng.random() < 0.95:
        body["question"] = rng.choice([QUESTION] * 6 + ["", " ", 5, None, ["q"]])
    if rng.random() < 0.8:
        kind = rng.choice(["direct"] * 3 + ["self_consistency"] * 3 + ["nope", None, 3])
        spec = {"kind": kind}
        for name in rng.sample(params, rng.randint(0, 3)):
            spec[name] = value_for(rng, name)
        body["strategy"] = rng.choice([spec, spec, kind, random_value(rng)])
    if rng.random() < 0.4:
        body["budget"] = {n: value_for(rng, n) for n in rng.sample(budget, rng.randint(0, 2))}
    if rng.random() < 0.3:
        body["roles"] = {rng.choice(["small", "large", "x"]): value_for(rng, "role")}
    for name in ("seed", "priority", "junk"):
        if rng.random() < 0.15:
            body[name] = rng.choice([random_value(rng), 3, "high"])
    return body if rng.random() < 0.97 else random_value(rng)


def test_random_bodies_never_500(sqlite_client: httpx.Client, simulator: Simulator) -> None:
    import random

    simulator.set_config(script(Rule(replies=["The answer is 5."])))
    rng = random.Random(1234)
    statuses: dict[int, int] = {}
    for _ in range(300):
        body = random_body(rng)
        response = sqlite_client.post(
            "/v1/jobs", content=json.dumps(body), headers={"content-type": "application/json"}
        )
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code in (202, 422), (body, response.text)
        if response.status_code == 422:
            assert response.json()["error"]["field"], body
    assert statuses.get(422, 0) > 100 and statuses.get(202, 0) > 20, statuses


@pytest.fixture
def sqlite_client(
    simulator: Simulator, sqlite_database_url: str, tmp_path: Path
) -> Iterator[httpx.Client]:
    """Bad-input tests need one backend: validation happens before any SQL."""
    settings = simulator_settings(simulator.url, sqlite_database_url, tmp_path)
    api = ApiSettings(_env_file=None)  # type: ignore[call-arg]
    app = create_app(settings, executor=InProcessExecutor(), api_settings=api)
    with ApiServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


# -- the OpenAI-compatible endpoint ------------------------------------------------------


def test_openai_client_gets_an_answer_with_full_usage(api_url: str, simulator: Simulator) -> None:
    openai = pytest.importorskip("openai")
    replies = ["The answer is 5.", "The answer is 5.", "The answer is 7."]
    simulator.set_config(script(Rule(replies=replies)))
    with openai.OpenAI(base_url=f"{api_url}/v1", api_key="unused-while-no-keys-exist") as client:
        listed = client.models.list().data
        # Every registered strategy is a model, then the presets Ponder ships (this
        # tenant has saved none).
        models = [m.id for m in listed if m.owned_by == "ponder"]
        assert models[: len(STRATEGIES)] == [f"ponder/{kind}" for kind in sorted(STRATEGIES)]
        assert len(models) == len(listed) > len(STRATEGIES)
        completion = client.chat.completions.create(
            model="ponder/self_consistency",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": QUESTION},
            ],
            extra_body={"ponder": {"strategy": {"n": 3}}},
        )
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(
                model="gpt-4", messages=[{"role": "user", "content": "hi"}]
            )
        # OpenAI's status for an invalid request (Ponder's other endpoints answer 422).
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(
                model="ponder/direct", messages=[{"role": "system", "content": "no question"}]
            )
    assert "5" in (completion.choices[0].message.content or "")
    extension = completion.model_extra["ponder"]
    assert extension["answer"] == "5" and extension["votes"] == {"5": 2, "7": 1}
    job = httpx.get(f"{api_url}/v1/jobs/{completion.id}").json()
    assert job["id"] == extension["job_id"]
    usage = completion.usage
    assert usage is not None
    assert usage.completion_tokens == job["usage"]["completion_tokens"]
    assert usage.completion_tokens == simulator.stats.completion_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_openai_stream(api_url: str, simulator: Simulator) -> None:
    openai = pytest.importorskip("openai")
    simulator.set_config(script(Rule(replies=["It is 5. The answer is 5."])))
    with openai.OpenAI(base_url=f"{api_url}/v1", api_key="x") as client:
        stream = client.chat.completions.create(
            model="ponder/direct",
            messages=[{"role": "user", "content": QUESTION}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "It is 5. The answer is 5."
    assert {c.id for c in chunks} == {chunks[0].id}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    job = httpx.get(f"{api_url}/v1/jobs/{chunks[0].id}").json()
    assert job["status"] == "succeeded"
    assert job["usage"]["completion_tokens"] == chunks[-1].usage.completion_tokens


# -- service endpoints ---------------------------------------------------------------


def test_strategies_pools_health_metrics_docs(client: httpx.Client, simulator: Simulator) -> None:
    simulator.set_config(script(Rule(replies=["The answer is 5."])))
    wait_done(client, submit(client, strategy="direct")["id"])
    strategies = {s["kind"]: s for s in client.get("/v1/strategies").json()}
    assert set(strategies) == set(STRATEGIES)
    schema = strategies["self_consistency"]["schema"]
    assert schema["properties"]["n"]["maximum"] == 256
    assert "Wang et al." in strategies["self_consistency"]["doc"]
    assert strategies["direct"]["model"] == "ponder/direct"

    pools = {p["role"]: p for p in client.get("/v1/pools").json()}
    assert (pools["small"]["model"], pools["large"]["model"]) == ("sim-small", "sim-large")
    endpoint = pools["small"]["endpoints"][0]
    assert endpoint["url"] == simulator.url and endpoint["healthy"] is True
    assert endpoint["breaker"] == "closed"
    unprobed = client.get("/v1/pools", params={"probe": False}).json()
    assert unprobed[0]["endpoints"][0]["healthy"] is None

    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert set(ready.json()["checks"]) == {"database", "broker", "pools"}

    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'ponder_jobs{status="succeeded"} 1.0' in text
    # This process's count (core.metrics; other tests in the process add to it).
    assert 'ponder_model_calls_total{model="sim-small",outcome="ok",role="small"}' in text
    assert 'ponder_queue_depth{priority="default"} 0.0' in text
    assert "ponder_jobs_in_flight 0.0" in text
    assert 'ponder_breaker_state{endpoint="1",pool="small"} 0.0' in text
    assert 'ponder_model_tokens_total{kind="completion",role="small"}' in text
    assert 'ponder_model_call_latency_seconds_bucket{le="+Inf",role="small"} 1.0' in text
    assert 'ponder_http_requests_total{method="POST",route="/v1/jobs",status="202"} 1.0' in text

    openapi = client.get("/openapi.json").json()
    for path in (
        "/v1/jobs",
        "/v1/jobs/{job_id}/events",
        "/v1/jobs/{a}/diff/{b}",
        "/v1/chat/completions",
        "/v1/models",
        "/readyz",
    ):
        assert path in openapi["paths"], path
    assert client.get("/docs").status_code == 200


def test_readyz_reports_a_dead_pool(
    simulator: Simulator, sqlite_database_url: str, tmp_path: Path
) -> None:
    settings = simulator_settings("http://127.0.0.1:9", sqlite_database_url, tmp_path)
    api = ApiSettings(_env_file=None, health_timeout_s=1.0)  # type: ignore[call-arg]
    app = create_app(settings, executor=InProcessExecutor(), api_settings=api)
    with ApiServer(app) as server:
        ready = httpx.get(f"{server.url}/readyz", timeout=10)
    assert ready.status_code == 503
    checks = ready.json()["checks"]
    assert checks["database"]["ok"] and not checks["pools"]["ok"]
    assert "large" in checks["pools"]["detail"] and "small" in checks["pools"]["detail"]


def test_docs_page_serves_its_assets_locally_and_offers_authorize(
    sqlite_client: httpx.Client,
) -> None:
    """``/docs`` must work on a machine with no internet: every script, stylesheet and
    icon it names is served by Ponder itself; the schema declares the bearer key."""
    page = sqlite_client.get("/docs")
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page.text)
    urls += re.findall(r"""url: ?['"]([^'"]+)['"]""", page.text)
    assert urls and all(u.startswith("/") for u in urls), urls
    for url in urls:
        assert sqlite_client.get(url).status_code == 200, url
    schema = sqlite_client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert schema["paths"]["/v1/jobs"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in schema["paths"]["/healthz"]["get"]


def test_a_body_without_json_content_type_is_told_which_header_to_send(
    sqlite_client: httpx.Client,
) -> None:
    """curl -d sends form encoding by default: the 422 names the header, not the fields."""
    for method, path, body in [
        ("POST", "/v1/jobs", b'{"question": "What is 2 + 3?"}'),
        ("PUT", "/v1/presets/sc", b'{"spec": {"kind": "direct"}}'),
    ]:
        response = sqlite_client.request(
            method, path, content=body,
            headers={"content-type": "application/x-www-form-urlencoded"},
        )  # fmt: skip
        assert response.status_code == 422
        error = response.json()["error"]
        assert error["field"] == "Content-Type"
        assert "Content-Type: application/json" in error["message"]
        assert "application/x-www-form-urlencoded" in error["message"]


class FlakyExecutor(InProcessExecutor):
    """Refuses the first publish, as a broker that is down for a moment does."""

    def __init__(self) -> None:
        super().__init__()
        self.published: list[str] = []

    async def submit(self, job_id: str, *, priority: str, max_seconds: float | None = None) -> None:
        self.published.append(job_id)
        if len(self.published) == 1:
            raise ConnectionError("broker unreachable")
        await super().submit(job_id, priority=priority, max_seconds=max_seconds)


def test_an_idempotent_retry_publishes_a_job_whose_first_publish_failed(
    simulator: Simulator, sqlite_database_url: str, tmp_path: Path
) -> None:
    simulator.set_config(script(Rule(replies=["The answer is 5."])))
    settings = simulator_settings(simulator.url, sqlite_database_url, tmp_path)
    executor = FlakyExecutor()
    app = create_app(settings, executor=executor, api_settings=ApiSettings(_env_file=None))  # type: ignore[call-arg]
    body = {"question": QUESTION, "strategy": "direct"}
    with ApiServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        first = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "once"})
        assert first.status_code == 503 and first.json()["error"]["code"] == "enqueue_failed"
        assert first.headers["retry-after"] == "2"
        job_id = first.json()["error"]["job_id"]
        retry = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "once"})
        assert retry.status_code == 200 and retry.json()["id"] == job_id
        assert executor.published == [job_id, job_id]
        assert wait_done(client, job_id, timeout=10)["status"] == "succeeded"
