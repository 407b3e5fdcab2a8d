"""Every hostile input the probe found answered 500 now gets a 4xx naming the field,
on SQLite and PostgreSQL (which refuses to store a NUL character), and nothing is
half-written."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.api.executor import InProcessExecutor
from app.api.main import create_app
from app.api.settings import ApiSettings
from core.simulator.config import Rule
from core.simulator.server import Simulator
from strategies.registry import MAX_SPEC_DEPTH
from tests.fixtures.api import ApiServer
from tests.fixtures.runtime import simulator_settings
from tests.integration.test_api_jobs import QUESTION, script, wait_done

NUL = "a\x00b"


@pytest.fixture
def client(simulator: Simulator, database_url: str, tmp_path: Path) -> Iterator[httpx.Client]:
    simulator.set_config(script(Rule(replies=["The answer is 5."])))
    settings = simulator_settings(simulator.url, database_url, tmp_path)
    api = ApiSettings(_env_file=None)  # type: ignore[call-arg]
    app = create_app(settings, executor=InProcessExecutor(), api_settings=api)
    with ApiServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def nested(depth: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"kind": "direct"}
    for _ in range(depth - 1):
        spec = {"kind": "best_of_n", "n": 2, "generator": spec}
    return spec


def raw(client: httpx.Client, method: str, path: str, text: str) -> httpx.Response:
    # Sent as text: json.dumps would refuse Infinity, which Python's parser accepts.
    return client.request(method, path, content=text, headers={"content-type": "application/json"})


def _body(**fields: Any) -> str:
    return json.dumps({"question": QUESTION, **fields})


BAD_BODIES = [
    ("POST", "/v1/jobs", _body(question=NUL), "question"),
    ("POST", "/v1/jobs", _body(strategy=NUL), "strategy"),
    ("POST", "/v1/jobs", _body(strategy={"kind": "direct", "role": NUL}), "strategy.role"),
    ("POST", "/v1/jobs", _body(budget={"max_tokens": 10, NUL: 1}), "budget"),
    ("POST", "/v1/jobs", _body().replace("}", ', "budget": {"max_seconds": Infinity}}'),
     "budget.max_seconds"),
    ("POST", "/v1/jobs", _body().replace("}", ', "budget": {"max_cost": NaN}}'),
     "budget.max_cost"),
    ("POST", "/v1/jobs", _body(strategy=nested(MAX_SPEC_DEPTH + 1)), "strategy"),
    ("POST", "/v1/jobs", _body(strategy=nested(240)), "strategy"),
    ("POST", "/v1/jobs", '{"question": ' + "[" * 5000 + "]" * 5000 + "}", "body"),
    ("PUT", "/v1/presets/fast", json.dumps({"spec": {"kind": "direct"}, "description": NUL}),
     "description"),
    ("PUT", "/v1/presets/fast", json.dumps({"spec": {"kind": NUL}}), "spec.kind"),
    ("POST", "/v1/chat/completions",
     json.dumps({"model": "ponder/direct", "messages": [{"role": "user", "content": NUL}]}),
     "messages.0.content"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "text", "field"), BAD_BODIES)
def test_hostile_bodies_are_422_naming_the_field(
    client: httpx.Client, method: str, path: str, text: str, field: str
) -> None:
    response = raw(client, method, path, text)
    # The OpenAI face answers an invalid request as OpenAI does: 400, with "param".
    expected = 400 if path == "/v1/chat/completions" else 422
    assert response.status_code == expected, response.text
    error = response.json()["error"]
    assert error["field"].startswith(field), error
    assert error["request_id"]
    assert client.get("/v1/jobs").json()["items"] == []  # nothing half-written
    assert [p for p in client.get("/v1/presets").json() if not p["shipped"]] == []


def test_the_deepest_allowed_spec_is_accepted(client: httpx.Client) -> None:
    response = client.post(
        "/v1/jobs", json={"question": QUESTION, "strategy": nested(MAX_SPEC_DEPTH)}
    )
    assert response.status_code == 202, response.text


def test_hostile_paths_queries_and_headers(client: httpx.Client) -> None:
    c = client
    paths = ["/v1/jobs/a%00b", "/v1/jobs/a%00b/trace", "/v1/jobs/a%00b/events",
             "/v1/jobs/x/diff/a%00b", "/v1/presets/a%00b", "/v1/jobs/a%01b/cancel"]  # fmt: skip
    for path in paths:
        method = "POST" if path.endswith("cancel") else "GET"
        response = c.request(method, path)
        assert response.status_code == 422, (path, response.text)
    preset = c.delete("/v1/presets/a%00b")
    assert (preset.status_code, preset.json()["error"]["field"]) == (422, "name")
    for params, field in [
        ({"created_after": "0001-01-01T00:00:00+01:00"}, "created_after"),
        ({"created_after": "9999-12-31T23:59:59-01:00"}, "created_after"),
        ({"strategy": NUL}, "strategy"),
    ]:
        response = c.get("/v1/jobs", params=params)
        assert (response.status_code, response.json()["error"]["field"]) == (422, field)
    job = c.post("/v1/jobs", json={"question": QUESTION, "strategy": "direct"}).json()
    wait_done(c, job["id"])
    too_big = c.get(f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": str(2**63)})
    assert too_big.status_code == 400 and too_big.json()["error"]["field"] == "Last-Event-ID"
    negative = c.get(f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": "-1"})
    assert negative.status_code == 400
    resumed = c.get(f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": "1"})
    assert resumed.status_code == 200 and "job_finished" in resumed.text
