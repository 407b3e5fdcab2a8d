"""`ponder eval --url`: the same eval through a Ponder server's REST API."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import uvicorn

from app.api.executor import InProcessExecutor
from app.api.main import create_app
from app.api.settings import ApiSettings
from core.errors import InvalidInput
from core.simulator.server import Simulator
from evals.arms import parse_arms
from evals.backends import RestBackend
from evals.dataset import load_dataset
from evals.results import load_results
from evals.runs import Options, evaluate, replay
from ponder_client import AsyncPonderClient
from tests.evals.conftest import ARMS, priced_settings


@pytest.fixture
def api_url(sim: Simulator, sqlite_database_url: str, tmp_path: Path) -> Iterator[str]:
    """The API with in-process job execution, uvicorn in a thread on a free port."""
    settings = priced_settings(sim.url, sqlite_database_url, tmp_path)
    api = ApiSettings(_env_file=None)  # type: ignore[call-arg]
    app = create_app(settings, executor=InProcessExecutor(), api_settings=api)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "API server did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=15)
    sock.close()


@pytest.fixture
async def backend(api_url: str) -> AsyncIterator[RestBackend]:
    async with AsyncPonderClient(api_url, timeout=30) as client:
        yield RestBackend(client)


async def test_eval_and_strict_replay_over_rest(
    backend: RestBackend, sim: Simulator, dataset: Path, tmp_path: Path
) -> None:
    assert {"direct", "self_consistency"} <= set(await backend.check())
    out = tmp_path / "out"
    run = await evaluate(
        backend, load_dataset(dataset), parse_arms(ARMS), Options(out, "rest", concurrency=4)
    )
    summary = run.to_json()["summary"]
    assert [s["correct"] for s in summary] == [2, 3, 3]
    assert [s["mean_tokens"] for s in summary] == [5.5, 12.5, 5.0]
    # Cost from the server's pool prices, summed over each job's model-call events.
    assert [s["mean_cost"] for s in summary] == pytest.approx([0.0055, 0.0125, 0.05])
    assert sim.stats.requests == 18

    again = await replay(
        backend, load_results(out / "results.json"), out / "results.json", [],
        Options(tmp_path / "re", "re"),
    )  # fmt: skip
    assert sim.stats.requests == 18
    assert again.calls() == (0, 18)
    assert [s["mean_cost"] for s in again.to_json()["summary"]] == pytest.approx(
        [0.0055, 0.0125, 0.05]
    )


async def test_unknown_jobs_cannot_be_replayed(backend: RestBackend, tmp_path: Path) -> None:
    assert await backend.missing(["0" * 32]) == ["0" * 32]
    with pytest.raises(InvalidInput, match="cannot reach the Ponder server"):
        async with AsyncPonderClient("http://127.0.0.1:9") as client:
            await RestBackend(client).check()
