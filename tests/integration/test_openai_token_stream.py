"""The interactive lane of the OpenAI face: ``stream: true`` streams ``direct``'s answer
token by token when the API runs the job itself, journaled as a streamed call (a strict
replay gives the same text with no model call); a job naming a tool the API process
cannot run goes to the workers instead."""

from __future__ import annotations

import httpx
import pytest

from app.api import openai_compat
from app.api.executor import CeleryExecutor, InProcessExecutor
from app.api.interactive import LaneExecutor
from core.simulator import Latency, Rule, Simulator
from tests.integration.test_openai_fidelity import (  # noqa: F401 - serve is a fixture
    USER,
    Serve,
    script,
    sdk,
    serve,
    wait_status,
)

ANSWER = "Two plus three makes five, so the answer is 5."


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_direct_streams_its_tokens_as_they_are_generated(
    serve: Serve,  # noqa: F811 - the fixture
    simulator: Simulator,
) -> None:
    simulator.set_config(script(Rule(replies=[ANSWER]), latency=Latency(per_token_ms=5)))
    # The lane for chat requests; replays (not chat) run on the in-process executor.
    url = serve(executor=LaneExecutor(InProcessExecutor(), max_jobs=4))
    with sdk(url) as client:
        stream = client.chat.completions.create(model="ponder/direct", messages=USER, stream=True)
        chunks = list(stream)
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    job_id = chunks[0].id  # every chunk's id is the job's
    # The answer arrives in many pieces, each once: not one chunk at the end.
    assert len(pieces) > 3, pieces
    assert "".join(pieces) == ANSWER

    job = wait_status(url, job_id, {"succeeded"})
    assert job["conversation"]["stream"] is True and job["result"]["answer"] == "5"
    trace = httpx.get(f"{url}/v1/jobs/{job_id}/trace").json()
    (call,) = [e for e in trace["events"] if e["type"] == "model_call"]
    assert call["attributes"]["stream"] is True

    before = simulator.stats.requests
    replayed = httpx.post(f"{url}/v1/jobs/{job_id}/replay", json={"mode": "strict"}).json()
    child = wait_status(url, replayed["id"], {"succeeded", "failed"})
    assert child["status"] == "succeeded" and child["result"]["text"] == ANSWER
    assert simulator.stats.requests == before


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_vote_still_sends_its_answer_once_at_the_end(
    serve: Serve,  # noqa: F811 - the fixture
    simulator: Simulator,
) -> None:
    simulator.set_config(script(Rule(replies=[ANSWER])))
    url = serve()
    with sdk(url) as client:
        stream = client.chat.completions.create(
            model="ponder/self_consistency",
            messages=USER,
            stream=True,
            extra_body={"ponder": {"strategy": {"n": 3}}},
        )
        pieces = [
            chunk.choices[0].delta.content
            for chunk in stream
            if chunk.choices and chunk.choices[0].delta.content
        ]
    assert pieces == [ANSWER]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_tool_job_the_api_cannot_sandbox_goes_to_the_workers(
    serve: Serve,  # noqa: F811 - the fixture
    simulator: Simulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An API container has no namespaces for the sandbox (a worker's has): the lane must
    # not take a program_of_thought job it would fail, but hand it to the broker.
    monkeypatch.setattr(
        openai_compat, "unavailable_here", lambda name, settings: "no sandbox in the API"
    )
    enqueued: list[str] = []
    url = serve(
        executor=LaneExecutor(CeleryExecutor(enqueue=lambda job_id, **_: enqueued.append(job_id)),
                              max_jobs=4),
        chat_timeout_s=0.5,
    )  # fmt: skip
    body = {"model": "ponder/program_of_thought", "messages": USER}
    answer = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"x-should-retry": ""})
    assert answer.status_code == 504  # nobody consumes the broker in this test
    assert len(enqueued) == 1
    # A job without tools still takes the lane.
    simulator.set_config(script(Rule(replies=[ANSWER])))
    direct = httpx.post(f"{url}/v1/chat/completions", json={**body, "model": "ponder/direct"})
    assert direct.status_code == 200 and len(enqueued) == 1
