"""Experiments: `ponder eval` (in-process and `--url`) stores its run in PostgreSQL, the
API serves it (summary with intervals, arms × problems grid) to its tenant only, and
`--replay EXPERIMENT_ID -p k=v` re-scores it with zero model calls.

The scripted problems and replies are ``tests.evals.conftest``'s (first three problems):

| problem | direct (small) | vote (adaptive, n=3)               |
|---|---|---|
| p1 2+3=5  | 5 ✓ | 5, 6, 5 -> 5 ✓ (3 calls)             |
| p2 10-4=6 | 7 ✗ | 6, 7, 6 -> 6 ✓ (3 calls)             |
| p3 3*3=9  | 8 ✗ | 8, 8 -> 8 ✗ (2 calls: unbeatable)    |
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.simulator.server import Simulator
from evals.stats import wilson_interval
from tests.evals.conftest import (
    DIRECT,
    DIRECT_LABEL,
    PROBLEMS,
    VOTE,
    VOTE_LABEL,
    script,
    write_lines,
)
from tests.evals.test_cli import cli_env
from tests.fixtures.api import make_key, serve_api

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = re.compile(r"experiment: ([0-9a-f]{32})")


def ponder_eval(env: dict[str, str], *args: str) -> tuple[str, str]:
    """Run ``ponder eval``; (stdout, the experiment id it printed)."""
    ran = subprocess.run(
        [sys.executable, "-m", "app.cli", "eval", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    found = EXPERIMENT.search(ran.stderr)
    assert found, ran.stderr
    return ran.stdout, found.group(1)


class Api:
    def __init__(self, url: str, key: str) -> None:
        self.http = httpx.Client(
            base_url=url, timeout=30, headers={"Authorization": f"Bearer {key}"}
        )

    def get(self, path: str, status: int = 200) -> Any:
        response = self.http.get(path)
        assert response.status_code == status, response.text
        return response.json()

    def post(self, path: str, body: Any, status: int) -> Any:
        response = self.http.post(path, json=body)
        assert response.status_code == status, response.text
        return response.json()


class Stack:
    def __init__(self, url: str, env: dict[str, str], database_url: str) -> None:
        self.url, self.env, self.database_url = url, env, database_url
        self.clients: list[Api] = []

    def api(self, tenant: str) -> Api:
        """A client with a new key for ``tenant``."""
        self.clients.append(Api(self.url, make_key(self.database_url, tenant)))
        return self.clients[-1]


@pytest.fixture
def stack(simulator: Simulator, clean_pg_database_url: str, tmp_path: Path) -> Iterator[Stack]:
    """The API, and the env for `ponder eval` on the same PostgreSQL and simulator."""
    simulator.set_config(script())
    env = cli_env(tmp_path, simulator.url)
    env["PONDER_DATABASE_URL"] = clean_pg_database_url
    with serve_api(simulator.url, clean_pg_database_url, tmp_path / "api") as url:
        built = Stack(url, env, clean_pg_database_url)
        yield built
        for client in built.clients:
            client.http.close()


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_lines(tmp_path / "three.jsonl", PROBLEMS[:3])


def test_eval_is_stored_served_and_replayed_with_zero_model_calls(
    stack: Stack, simulator: Simulator, dataset: Path, tmp_path: Path
) -> None:
    env = stack.env
    out, experiment_id = ponder_eval(
        env, "--dataset", str(dataset), "--strategy", DIRECT, "--strategy", VOTE,
        "--out", str(tmp_path / "out"), "--name", "three",
    )  # fmt: skip
    assert "model calls: 11 live" in out  # 3 direct + 3 + 3 + 2 votes
    assert f'"experiment_id": "{experiment_id}"' in (tmp_path / "out" / "results.json").read_text()
    # The CLI's jobs and experiments are tenant "default"'s.
    api = stack.api("default")

    page = api.get("/v1/experiments")
    assert [e["id"] for e in page["items"]] == [experiment_id] and page["next_cursor"] is None
    experiment = api.get(f"/v1/experiments/{experiment_id}")
    assert experiment == page["items"][0]
    assert (experiment["name"], experiment["problems"]) == ("three", 3)
    assert experiment["dataset"]["name"] == "three.jsonl"
    assert len(experiment["dataset"]["sha256"]) == 64
    assert experiment["parent_experiment_id"] is None and experiment["params"] is None
    assert experiment["calls"] == {"live": 11, "replayed": 0}
    direct, vote = experiment["arms"]
    assert (direct["label"], vote["label"]) == (DIRECT_LABEL, VOTE_LABEL)
    assert vote["params"]["n"] == 3 and vote["roles"] == ["small"]
    assert (direct["summary"]["correct"], vote["summary"]["correct"]) == (1, 2)
    low, high = wilson_interval(1, 3)
    assert direct["summary"]["accuracy"] == pytest.approx(1 / 3)
    assert (direct["summary"]["ci_low"], direct["summary"]["ci_high"]) == pytest.approx((low, high))
    assert vote["summary"]["mean_tokens"] == pytest.approx((15 + 15 + 10) / 3)
    # Prices: small 1.0 per 1k generated tokens.
    assert direct["summary"]["mean_cost"] == pytest.approx(0.005)
    assert direct["summary"]["latency_p50"] > 0

    grid = api.get(f"/v1/experiments/{experiment_id}/rows")
    assert grid["arms"] == [DIRECT_LABEL, VOTE_LABEL]
    assert grid["problems"] == [{"index": i, "id": f"p{i + 1}"} for i in range(3)]
    cells = {(r["arm"], r["problem_id"]): r for r in grid["rows"]}
    assert len(cells) == 6
    assert [cells[(0, p)]["correct"] for p in ("p1", "p2", "p3")] == [True, False, False]
    assert [cells[(1, p)]["correct"] for p in ("p1", "p2", "p3")] == [True, True, False]
    assert cells[(1, "p3")]["answer"] == "8" and cells[(1, "p3")]["calls"] == 2
    # Every cell is a job the tenant can open.
    job = api.get(f"/v1/jobs/{cells[(0, 'p2')]['job_id']}")
    assert (job["question"], job["result"]["answer"]) == ("What is 10 - 4?", "7")

    # What if the vote had stopped at n=2? Its first two samples are in every journal.
    requests = simulator.stats.requests
    out, child_id = ponder_eval(
        env, "--replay", experiment_id, "-p", "self_consistency.n=2",
        "--out", str(tmp_path / "n2"),
    )  # fmt: skip
    assert simulator.stats.requests == requests
    assert "model calls: 0 live, 9 replayed from journals" in out
    child = api.get(f"/v1/experiments/{child_id}")
    assert child["parent_experiment_id"] == experiment_id
    assert child["params"]["pairs"] == [["self_consistency.n", 2]]
    assert child["params"]["mode"] == "strict"
    assert [a["label"] for a in child["arms"]] == [DIRECT_LABEL, f"{VOTE_LABEL} -> n=2"]
    assert [a["summary"]["failed"] for a in child["arms"]] == [0, 0]
    assert child["calls"] == {"live": 0, "replayed": 9}
    rows = api.get(f"/v1/experiments/{child_id}/rows")["rows"]
    assert {r["parent_job_id"] for r in rows} == {r["job_id"] for r in grid["rows"]}

    # n=5 needs samples no journal holds: those rows fail, and nothing is called. (An
    # id prefix will do, as for jobs.)
    _, failing_id = ponder_eval(
        env, "--replay", experiment_id[:8], "-p", "self_consistency.n=5",
        "--out", str(tmp_path / "n5"),
    )  # fmt: skip
    assert simulator.stats.requests == requests
    failing = api.get(f"/v1/experiments/{failing_id}")
    assert failing["arms"][0]["summary"]["failed"] == 0
    assert failing["arms"][1]["summary"]["failed"] == 3
    assert failing["calls"]["live"] == 0
    report = (tmp_path / "n5" / "report.md").read_text()
    assert "journal" in report.lower()


def test_eval_over_url_is_stored_for_its_tenant_only(
    stack: Stack, simulator: Simulator, dataset: Path, tmp_path: Path
) -> None:
    api, rival = stack.api(f"acme-{uuid.uuid4().hex[:6]}"), stack.api("rival")
    key = api.http.headers["Authorization"].removeprefix("Bearer ")
    _, experiment_id = ponder_eval(
        stack.env, "--url", stack.url, "--api-key", key, "--dataset", str(dataset),
        "--strategy", DIRECT, "--strategy", VOTE, "--out", str(tmp_path / "out"),
    )  # fmt: skip
    experiment = api.get(f"/v1/experiments/{experiment_id}")
    assert [a["summary"]["correct"] for a in experiment["arms"]] == [1, 2]
    assert experiment["settings"]["backend"] == stack.url
    grid = api.get(f"/v1/experiments/{experiment_id}/rows")
    assert len(grid["rows"]) == 6
    # A what-if replay on the server: strict replays there, zero model calls.
    requests = simulator.stats.requests
    out, child_id = ponder_eval(
        stack.env, "--url", stack.url, "--api-key", key, "--replay", experiment_id,
        "-p", "self_consistency.n=2", "--out", str(tmp_path / "n2"),
    )  # fmt: skip
    assert simulator.stats.requests == requests
    assert "model calls: 0 live, 9 replayed from journals" in out
    child = api.get(f"/v1/experiments/{child_id}")
    assert child["parent_experiment_id"] == experiment_id
    assert [a["summary"]["failed"] for a in child["arms"]] == [0, 0]

    # Another tenant: it does not exist, and its rows cannot be written.
    rival.get(f"/v1/experiments/{experiment_id}", status=404)
    rival.get(f"/v1/experiments/{experiment_id}/rows", status=404)
    assert rival.get("/v1/experiments")["items"] == []
    row = {k: v for k, v in grid["rows"][0].items() if k != "arm"}
    rival.post(f"/v1/experiments/{experiment_id}/rows", {"rows": [row]}, status=404)
    # Nor may a tenant's rows name another tenant's jobs, or a parent it cannot see.
    arms = [{k: a[k] for k in ("label", "spec", "params", "roles")} for a in experiment["arms"]]
    own = rival.post("/v1/experiments", {"name": "mine", "arms": arms, "problems": 3}, 201)
    error = rival.post(f"/v1/experiments/{own['id']}/rows", {"rows": [row]}, 422)["error"]
    assert error["field"] == "rows.0.job_id"
    body = {"name": "x", "arms": arms, "parent_experiment_id": experiment_id}
    assert rival.post("/v1/experiments", body, 422)["error"]["field"] == "parent_experiment_id"

    # Bad input names the field.
    def field(path: str, body: dict[str, Any]) -> str:
        return str(api.post(path, body, 422)["error"]["field"])

    bad_arm = {**arms[1], "params": {**arms[1]["params"], "n": 0}}
    assert field("/v1/experiments", {"name": "x", "arms": [bad_arm]}) == "arms.0.params.n"
    assert field("/v1/experiments", {"name": "x", "arms": [arms[0], arms[0]]}) == "arms.1.label"
    assert field("/v1/experiments", {"name": "x", "arms": []}) == "arms"
    assert field("/v1/experiments", {"name": "x", "arms": arms, "colour": 1}) == "colour"
    rows_path = f"/v1/experiments/{experiment_id}/rows"
    assert field(rows_path, {"rows": [{**row, "strategy": "nope"}]}) == "rows.0.strategy"
    assert field(rows_path, {"rows": [{**row, "problem_index": 7}]}) == "rows.0.problem_index"
    assert field(rows_path, {"rows": [{**row, "correct": "maybe"}]}) == "rows.0.correct"
    assert api.get("/v1/experiments?cursor=zzz", status=422)["error"]["field"] == "cursor"
    # Storing a row again replaces it: the summary does not count it twice.
    again = api.post(rows_path, {"rows": [row]}, 200)
    assert [a["summary"]["n"] for a in again["arms"]] == [3, 3]
