"""The `ponder` command as a user runs it: a subprocess against the simulator."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from core.simulator.config import Latency, Rule, SimulatorConfig
from core.simulator.server import Simulator
from strategies.registry import STRATEGIES

ROOT = Path(__file__).resolve().parents[2]
VALID_KINDS = ", ".join(sorted(STRATEGIES))


def cli_env(tmp_path: Path, sim_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PONDER_")}
    env["PONDER_DATA_DIR"] = str(tmp_path / "data")
    if sim_url is not None:
        env["PONDER_POOLS__SMALL__ENDPOINTS"] = json.dumps([sim_url])
        env["PONDER_POOLS__SMALL__MODEL"] = "sim-small"
        env["PONDER_POOLS__SMALL__KIND"] = "simulator"
    return env


def ponder(
    env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def jobs_in(tmp_path: Path) -> int:
    db = tmp_path / "data" / "ponder.db"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("select name from sqlite_master")}
        if "jobs" not in tables:
            return 0
        return int(conn.execute("select count(*) from jobs").fetchone()[0])


@pytest.fixture
def sim(simulator: Simulator) -> Simulator:
    simulator.set_config(
        SimulatorConfig(models=["sim-small"], rules=[Rule(replies=["2 + 3 = 5. The answer is 5."])])
    )
    return simulator


def test_solve_trace_and_strict_replay(sim: Simulator, tmp_path: Path) -> None:
    env = cli_env(tmp_path, sim.url)
    solved = ponder(
        env, "solve", "What is 2 + 3?", "--strategy", "self_consistency", "-p", "n=3", "--json"
    )
    assert solved.returncode == 0, solved.stderr
    out = json.loads(solved.stdout)
    assert out["answer"] == "5" and out["votes"] == {"5": 3}
    assert out["usage"]["by_role"]["small"]["calls"] == 1

    trace = json.loads(ponder(env, "trace", out["job_id"][:8], "--json").stdout)
    assert [s["kind"] for s in trace["spans"]][:3] == ["job", "strategy", "model_call"]
    assert [s["name"] for s in trace["spans"] if s["kind"] == "event"] == [
        "sample",
        "sample",
        "sample",
        "vote",
    ]

    requests = sim.stats.requests
    # Strict replay needs no pool at all: drop the pool settings to prove it.
    replayed = ponder(cli_env(tmp_path, None), "replay", out["job_id"], "--strict", "--json")
    assert replayed.returncode == 0, replayed.stderr
    again = json.loads(replayed.stdout)
    assert sim.stats.requests == requests
    assert again["answer"] == "5" and again["votes"] == out["votes"]
    assert again["live_calls"] == 0 and again["parent_job_id"] == out["job_id"]

    human = ponder(env, "trace", again["job_id"])
    assert "model_call small.generate" in human.stdout and "vote" in human.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["solve", "q", "--strategy", "nope"], "valid strategies: " + VALID_KINDS + "; presets: "),
        (["solve", "q", "-p", "n=zero"], "strategy.n"),
        (["solve", "   "], "question must be a non-empty string"),
        (["solve", "q", "--budget-tokens", "-5"], "budget.max_tokens"),
        (["replay", "doesnotexist", "--strict"], "no job with id"),
    ],
)
def test_bad_input_is_one_clear_message_and_exit_2(
    sim: Simulator, tmp_path: Path, args: list[str], message: str
) -> None:
    result = ponder(cli_env(tmp_path, sim.url), *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert jobs_in(tmp_path) == 0
    assert sim.stats.requests == 0


def test_unreachable_pool_fails_before_writing_a_job(tmp_path: Path) -> None:
    env = cli_env(tmp_path, "http://127.0.0.1:9")  # discard port: nothing listens
    result = ponder(env, "solve", "What is 2 + 3?")
    assert result.returncode == 2
    assert "pool 'small' is unreachable" in result.stderr
    assert "Traceback" not in result.stderr
    assert jobs_in(tmp_path) == 0


def journal_rows(tmp_path: Path) -> tuple[str | None, int]:
    db = tmp_path / "data" / "ponder.db"
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            row = conn.execute("select id from jobs").fetchone()
            count = conn.execute("select count(*) from model_calls").fetchone()[0]
    except sqlite3.OperationalError:
        return None, 0
    return (row[0] if row else None), int(count)


def test_sigkill_mid_job_then_resume_pays_only_for_missing_calls(
    simulator: Simulator, tmp_path: Path
) -> None:
    # Six sequential calls of ~0.3 s each; the solve process is killed after two are journaled.
    simulator.set_config(
        SimulatorConfig(
            models=["sim-small"],
            rules=[Rule(replies=["The answer is 5.", "The answer is 7."])],
            latency=Latency(ttft_ms=300),
        )
    )
    env = cli_env(tmp_path, simulator.url)
    spec: list[Any] = [
        "-p",
        "n=6",
        "-p",
        "adaptive=true",
        "-p",
        "batch_size=1",
        "-p",
        "min_samples=6",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "solve", "What is 2 + 3?", *spec, "--json"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    job_id, recorded = None, 0
    while time.monotonic() < deadline:
        job_id, recorded = journal_rows(tmp_path)
        if recorded >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert job_id is not None and 2 <= recorded < 6
    _, recorded = journal_rows(tmp_path)
    before = simulator.stats.requests

    resumed = ponder(env, "resume", job_id, "--json")
    assert resumed.returncode == 0, resumed.stderr
    out = json.loads(resumed.stdout)
    assert out["status"] == "succeeded"
    assert simulator.stats.requests - before == 6 - recorded
    assert (out["journal_hits"], out["live_calls"]) == (recorded, 6 - recorded)
    assert out["usage"]["calls"] == 6


def test_solve_runs_a_shipped_preset_by_name(sim: Simulator, tmp_path: Path) -> None:
    from core.presets import shipped_presets

    shipped = shipped_presets("default")[0]
    sim.set_config(SimulatorConfig(models=["sim-small", "sim-large"],
                                   rules=[Rule(replies=["```python\nprint(5)\n```"])]))  # fmt: skip
    env = cli_env(tmp_path, sim.url)
    env["PONDER_POOLS__LARGE__ENDPOINTS"] = json.dumps([sim.url])
    env["PONDER_POOLS__LARGE__MODEL"] = "sim-large"
    env["PONDER_POOLS__LARGE__KIND"] = "simulator"
    result = ponder(env, "solve", "What is 2 + 3?", "--strategy", shipped.name, "--json")
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)["job_id"]
    with sqlite3.connect(tmp_path / "data" / "ponder.db") as conn:
        (stored,) = conn.execute("select strategy from jobs where id = ?", (job,)).fetchone()
    assert json.loads(stored) == shipped.spec
