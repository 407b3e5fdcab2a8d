"""The OpenAI face's interactive lane: a chat completion's job runs in the API process
that took it, journaled and traced like any job, with no broker in the way."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.api.executor import CeleryExecutor
from app.api.interactive import LaneExecutor
from app.api.main import create_app
from app.api.settings import ApiSettings
from core.simulator.config import Rule
from core.simulator.server import Simulator
from tests.fixtures.api import ApiServer
from tests.fixtures.runtime import simulator_settings
from tests.integration.test_api_jobs import script

CHAT = {"model": "ponder/direct", "messages": [{"role": "user", "content": "2+3?"}]}


def _broker_down(job_id: str, **_: Any) -> None:
    raise ConnectionError("no broker in this test")


@pytest.fixture
def client(
    simulator: Simulator, sqlite_database_url: str, tmp_path: Path
) -> Iterator[httpx.Client]:
    # A Celery executor whose every publish fails: what the lane serves never needs it.
    executor = LaneExecutor(CeleryExecutor(enqueue=_broker_down), max_jobs=2)
    settings = simulator_settings(simulator.url, sqlite_database_url, tmp_path)
    api = ApiSettings(_env_file=None)  # type: ignore[call-arg]
    app = create_app(settings, executor=executor, api_settings=api)
    with ApiServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def test_a_chat_completion_is_served_without_the_broker(
    client: httpx.Client, simulator: Simulator
) -> None:
    simulator.set_config(script(Rule(replies=["The answer is 5."])))
    answer = client.post("/v1/chat/completions", json=CHAT)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["choices"][0]["message"]["content"] == "The answer is 5."
    trace = client.get(f"/v1/jobs/{body['id']}/trace").json()
    assert [e["type"] for e in trace["events"]][:3] == ["job", "strategy", "model_call"]
    assert trace["journal"]["entries"] == 1
    job = client.get(f"/v1/jobs/{body['id']}").json()
    assert job["status"] == "succeeded"

    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as s:
        text = "".join(s.iter_text())
    assert "The answer is 5." in text and "data: [DONE]" in text

    # Other jobs still go to the broker: here, a 503 naming the job that was saved.
    queued = client.post("/v1/jobs", json={"question": "q", "strategy": {"kind": "direct"}})
    assert queued.status_code == 503, queued.text
