"""The OpenAI face as the real ``openai`` SDK meets it: errors it parses, models it looks
up, retries that never pay for a job twice, ``n`` choices, progress while a streamed job
votes, and a closed stream that cancels its job.

Every test runs a real uvicorn server over SQLite and PostgreSQL with the interactive
lane (jobs run in the API process; the broker behind it refuses everything) and the
scripted simulator as the model server; the SDK keeps its default retries.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from app.api.executor import CeleryExecutor, InProcessExecutor, JobExecutor
from app.api.interactive import LaneExecutor
from app.api.main import create_app
from app.api.settings import ApiSettings
from core.simulator.config import Failure, Latency, Rule, SimulatorConfig
from core.simulator.server import Simulator
from tests.fixtures.api import ApiServer, make_key
from tests.fixtures.runtime import simulator_settings

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is 2 + 3?"}]
FIVE = "The answer is 5."


def script(*rules: Rule, latency: Latency | None = None, **extra: Any) -> SimulatorConfig:
    return SimulatorConfig(
        models=["sim-small", "sim-large"], rules=list(rules), latency=latency or Latency(), **extra
    )


def _broker_down(job_id: str, **_: Any) -> None:
    raise ConnectionError("no broker in this test")


def lane() -> JobExecutor:
    return LaneExecutor(CeleryExecutor(enqueue=_broker_down), max_jobs=4)


Serve = Callable[..., str]


@pytest.fixture
def serve(simulator: Simulator, database_url: str, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start an API (``chat_timeout_s``, an executor, pool settings) and return its URL."""
    servers: list[ApiServer] = []

    def start(
        *, executor: JobExecutor | None = None, pool: dict[str, Any] | None = None, **api: Any
    ) -> str:
        settings = simulator_settings(simulator.url, database_url, tmp_path, **(pool or {}))
        api_settings = ApiSettings(_env_file=None, sse_poll_min_s=0.02, **api)  # type: ignore[call-arg]
        app = create_app(settings, executor=executor or lane(), api_settings=api_settings)
        server = ApiServer(app).__enter__()
        servers.append(server)
        return server.url

    yield start
    for server in servers:
        server.__exit__()


def jobs_of(url: str, key: str | None = None) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    items: list[dict[str, Any]] = httpx.get(f"{url}/v1/jobs", headers=headers).json()["items"]
    return items


def wait_status(url: str, job_id: str, statuses: set[str], timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = httpx.get(f"{url}/v1/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['status']}"
        time.sleep(0.02)


def sdk(url: str, key: str = "unused-while-no-keys-exist", **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, **options)


# -- errors in OpenAI's shape; models by id ------------------------------------------------


def test_errors_have_openai_shape_and_models_are_found_by_id(
    serve: Serve, simulator: Simulator, database_url: str
) -> None:
    simulator.set_config(script(Rule(replies=[FIVE])))
    url = serve(key_cache_s=0)  # the key made below is required at once
    with sdk(url) as client:
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(
                model="ponder/direct", messages=[{"role": "system", "content": "no question"}]
            )
        with pytest.raises(openai.BadRequestError) as bad_n:
            client.chat.completions.create(model="ponder/direct", messages=USER, n=9)
        with pytest.raises(openai.NotFoundError) as unknown:
            client.chat.completions.create(model="gpt-4", messages=USER)
        assert client.models.retrieve("ponder/direct").id == "ponder/direct"
        put = httpx.put(f"{url}/v1/presets/cheap", json={"spec": {"kind": "direct"}})
        assert put.status_code in (200, 201), put.text
        preset = client.models.retrieve("ponder/cheap")
        with pytest.raises(openai.NotFoundError) as missing:
            client.models.retrieve("ponder/nothing-here")
    assert (preset.id, preset.owned_by) == ("ponder/cheap", "default")

    assert (bad.value.param, bad.value.code, bad.value.type) == (
        "messages",
        "invalid_input",
        "invalid_request_error",
    )
    body = bad.value.body
    assert isinstance(body, dict) and body["request_id"] and "user message" in body["message"]
    assert (bad_n.value.param, bad_n.value.type) == ("n", "invalid_request_error")
    assert (unknown.value.param, unknown.value.code, unknown.value.type) == (
        "model",
        "model_not_found",
        "not_found_error",
    )
    assert (missing.value.code, missing.value.type) == ("model_not_found", "not_found_error")
    # None of them made a job.
    assert jobs_of(url) == []

    key = make_key(database_url, "acme")
    with sdk(url, key="pk_wrong") as stranger, pytest.raises(openai.AuthenticationError) as auth:
        stranger.models.retrieve("ponder/direct")
    assert (auth.value.type, auth.value.code) == ("authentication_error", "unauthorized")
    with sdk(url, key=key) as acme, pytest.raises(openai.NotFoundError):
        acme.models.retrieve("ponder/cheap")  # another tenant's preset


# -- no client retry pays for a job twice ------------------------------------------------


def test_a_job_that_fails_for_good_is_one_job_and_not_retried(
    serve: Serve, simulator: Simulator
) -> None:
    # The model server refuses the request (400: too long, say) and, for the next
    # request, says the model does not exist (404: the operator's pool setup).
    simulator.set_config(script(Rule(replies=[FIVE]), failures=[Failure(status=400, times=1)]))
    url = serve()
    with sdk(url) as client, pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="ponder/direct", messages=USER)
    assert refused.value.code == "job_failed" and refused.value.type == "invalid_request_error"
    body = refused.value.body
    assert isinstance(body, dict) and body["job_error"] == "model_http_error"
    assert [j["id"] for j in jobs_of(url)] == [body["job_id"]]

    simulator.set_config(script(Rule(replies=[FIVE]), failures=[Failure(status=404, times=1)]))
    with sdk(url) as client, pytest.raises(openai.InternalServerError) as broken:
        client.chat.completions.create(model="ponder/direct", messages=USER)
    assert broken.value.status_code == 500
    assert broken.value.response.headers["x-should-retry"] == "false"
    assert len(jobs_of(url)) == 2  # the SDK did not retry the 500: one more job, not three
    assert simulator.stats.requests == 1


def test_a_transient_failure_is_retried_as_a_replay_of_its_job(
    serve: Serve, simulator: Simulator
) -> None:
    # Every attempt of the pool fails once (503): the job fails pool_unavailable, the SDK
    # retries, and the retry runs a live replay of the failed job, which gets the answer.
    simulator.set_config(script(Rule(replies=[FIVE]), failures=[Failure(status=503, times=1)]))
    url = serve(pool={"max_attempts": 1})
    with sdk(url) as client:
        completion = client.chat.completions.create(model="ponder/direct", messages=USER)
    assert completion.choices[0].message.content == FIVE
    jobs = {j["id"]: j for j in jobs_of(url)}
    assert len(jobs) == 2
    replay = jobs[completion.id]
    assert replay["status"] == "succeeded" and replay["parent_job_id"] in jobs
    parent = jobs[replay["parent_job_id"]]
    assert parent["status"] == "failed" and parent["error"]["code"] == "pool_unavailable"
    assert simulator.stats.requests == 2  # the failed attempt and the replay's one call


def test_a_timed_out_request_retried_waits_on_the_same_job(
    serve: Serve, simulator: Simulator
) -> None:
    # Each attempt gives up after 0.3 s (504, which the SDK retries); the job takes 5 s,
    # longer than the SDK's three attempts and their backoff.
    simulator.set_config(script(Rule(replies=[FIVE]), latency=Latency(ttft_ms=5000)))
    url = serve(chat_timeout_s=0.3)
    with sdk(url) as client, pytest.raises(openai.InternalServerError) as timed_out:
        client.chat.completions.create(model="ponder/direct", messages=USER)
    assert timed_out.value.status_code == 504 and timed_out.value.code == "job_timeout"
    [job] = jobs_of(url)
    assert wait_status(url, job["id"], {"succeeded", "failed"})["status"] == "succeeded"
    assert simulator.stats.requests == 1


def test_a_retry_after_a_timeout_gets_the_answer_of_the_first_job(
    serve: Serve, simulator: Simulator
) -> None:
    # The first attempt times out at 0.5 s; the job ends at about 1 s, during the retries.
    simulator.set_config(script(Rule(replies=[FIVE]), latency=Latency(ttft_ms=1000)))
    url = serve(chat_timeout_s=0.5)
    with sdk(url) as client:
        completion = client.chat.completions.create(model="ponder/direct", messages=USER)
    assert completion.choices[0].message.content == FIVE
    assert [j["id"] for j in jobs_of(url)] == [completion.id]
    assert simulator.stats.requests == 1


def test_a_dropped_connection_retried_attaches_to_the_same_job(
    serve: Serve, simulator: Simulator
) -> None:
    # The SDK's own read timeout (0.4 s) drops the connection; the job, about 1 s long,
    # keeps running and the retry attaches to it.
    simulator.set_config(script(Rule(replies=[FIVE]), latency=Latency(ttft_ms=1000)))
    url = serve()
    with sdk(url, timeout=0.4) as client:
        try:
            completion = client.chat.completions.create(model="ponder/direct", messages=USER)
        except openai.APITimeoutError:
            completion = None  # all three attempts were cut: still one job, below
    [job] = jobs_of(url)
    if completion is not None:
        assert completion.id == job["id"] and completion.choices[0].message.content == FIVE
    assert wait_status(url, job["id"], {"succeeded", "failed"})["status"] == "succeeded"
    assert simulator.stats.requests == 1


def test_a_request_sent_twice_without_a_retry_header_is_two_samples(
    serve: Serve, simulator: Simulator
) -> None:
    simulator.set_config(script(Rule(replies=[FIVE])))
    url = serve()
    with sdk(url) as client:
        first = client.chat.completions.create(model="ponder/direct", messages=USER)
        second = client.chat.completions.create(model="ponder/direct", messages=USER)
        # A retry the client declares itself, after the job finished: the same job.
        again = client.chat.completions.create(
            model="ponder/direct", messages=USER, extra_headers={"x-stainless-retry-count": "1"}
        )
    assert first.id != second.id and again.id == second.id
    assert len(jobs_of(url)) == 2


def test_a_job_out_of_time_is_a_length_answer_and_a_cancelled_one_a_409(
    serve: Serve, simulator: Simulator
) -> None:
    simulator.set_config(script(Rule(replies=[FIVE]), latency=Latency(ttft_ms=3000)))
    url = serve()
    with sdk(url) as client:
        late = client.chat.completions.create(
            model="ponder/direct",
            messages=USER,
            extra_body={"ponder": {"budget": {"max_seconds": 0.3}}},
        )
    # Out of wall time is out of budget, as max_tokens is: 200, "length", nothing to retry.
    assert late.choices[0].finish_reason == "length"
    assert (late.model_extra or {})["ponder"]["budget_exhausted"] is True

    def cancel_once_running() -> None:
        job_id = None
        while job_id is None:
            running = [j for j in jobs_of(url) if j["status"] == "running"]
            job_id = running[0]["id"] if running else None
            time.sleep(0.02)
        assert httpx.post(f"{url}/v1/jobs/{job_id}/cancel").status_code in (200, 202)

    canceller = threading.Thread(target=cancel_once_running)
    canceller.start()
    with sdk(url) as client, pytest.raises(openai.ConflictError) as cancelled:
        client.chat.completions.create(model="ponder/direct", messages=USER)
    canceller.join(timeout=20)
    assert (cancelled.value.code, cancelled.value.type) == ("job_cancelled", "conflict_error")
    assert cancelled.value.response.headers["x-should-retry"] == "false"
    assert len(jobs_of(url)) == 2  # the SDK did not retry the 409


# -- n choices ---------------------------------------------------------------------


def test_n_returns_the_top_distinct_answers_by_votes(serve: Serve, simulator: Simulator) -> None:
    replies = [FIVE, "It is 7. The answer is 7.", FIVE, "The answer is 9.", FIVE]
    simulator.set_config(script(Rule(replies=replies)))
    url = serve()
    options = {"ponder": {"strategy": {"n": 5}}}
    with sdk(url) as client:
        three = client.chat.completions.create(
            model="ponder/self_consistency", messages=USER, n=3, extra_body=options
        )
        many = client.chat.completions.create(
            model="ponder/self_consistency", messages=USER, n=8, extra_body=options
        )
    assert [c.message.content for c in three.choices] == [
        FIVE,
        "It is 7. The answer is 7.",
        "The answer is 9.",
    ]
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert [(c.model_extra or {})["ponder"] for c in three.choices] == [
        {"answer": "5", "votes": 3},
        {"answer": "7", "votes": 1},
        {"answer": "9", "votes": 1},
    ]
    assert len(many.choices) == 3  # only three distinct answers exist
    job = httpx.get(f"{url}/v1/jobs/{three.id}").json()
    assert three.usage is not None
    assert three.usage.completion_tokens == job["usage"]["completion_tokens"]
    assert len(jobs_of(url)) == 2  # one job per request, whatever n


# -- streaming: progress, and a closed stream cancels its job -------------------------------


def test_a_voting_stream_reports_progress_before_the_answer(
    serve: Serve, simulator: Simulator
) -> None:
    replies = [FIVE, "The answer is 7.", FIVE, FIVE]
    simulator.set_config(script(Rule(replies=replies)))
    url = serve()
    with sdk(url) as client:
        stream = client.chat.completions.create(
            model="ponder/self_consistency",
            messages=USER,
            stream=True,
            extra_body={"ponder": {"strategy": {"n": 4, "adaptive": True, "batch_size": 1}}},
        )
        chunks = list(stream)
    progress = [(c.model_extra or {})["ponder"]["progress"] for c in chunks if _progress(c)]
    assert [p["samples"] for p in progress] == [1, 2, 3, 4, 4]  # four samples, the vote
    assert [p["leader"] for p in progress] == ["5", "5", "5", "5", "5"]
    assert progress[-1]["share"] == 0.75 and progress[-1]["votes"] == {"5": 3, "7": 1}
    assert all(c.choices[0].delta.content == "" for c in chunks if _progress(c))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == FIVE
    last_progress = max(i for i, c in enumerate(chunks) if _progress(c))
    first_content = min(i for i, c in enumerate(chunks) if c.choices and c.choices[0].delta.content)
    assert last_progress < first_content


def _progress(chunk: Any) -> bool:
    extra = chunk.model_extra or {}
    return "progress" in (extra.get("ponder") or {})


@pytest.mark.parametrize("executor", ["lane", "in-process"])
def test_closing_the_stream_cancels_the_job(
    serve: Serve, simulator: Simulator, executor: str
) -> None:
    simulator.set_config(script(Rule(replies=[FIVE]), latency=Latency(ttft_ms=30_000)))
    url = serve(executor=lane() if executor == "lane" else InProcessExecutor())
    with sdk(url) as client:
        stream = client.chat.completions.create(model="ponder/direct", messages=USER, stream=True)
        first = next(iter(stream))
        # The job is running: its one model call is in the simulator.
        wait_status(url, first.id, {"running"})
        stream.close()
    job = wait_status(url, first.id, {"succeeded", "failed", "cancelled"})
    assert job["status"] == "cancelled"
    assert job["error"]["code"] == "cancelled"
    assert len(jobs_of(url)) == 1
