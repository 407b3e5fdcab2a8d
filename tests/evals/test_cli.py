"""`ponder eval` as a user runs it: a subprocess, pools configured by PONDER_ variables."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from core.presets import save_preset
from core.runtime import Runtime
from core.settings import Settings
from core.simulator.config import Latency
from core.simulator.server import Simulator
from tests.evals.conftest import ARMS, DIRECT_LABEL, PROBLEMS, script, write_lines

ROOT = Path(__file__).resolve().parents[2]


def cli_env(tmp_path: Path, sim_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PONDER_")}
    env["PONDER_DATA_DIR"] = str(tmp_path / "data")
    for role, model, price in (("SMALL", "sim-small", "1.0"), ("LARGE", "sim-large", "10.0")):
        env[f"PONDER_POOLS__{role}__ENDPOINTS"] = json.dumps([sim_url])
        env[f"PONDER_POOLS__{role}__MODEL"] = model
        env[f"PONDER_POOLS__{role}__KIND"] = "simulator"
        env[f"PONDER_POOLS__{role}__PRICE_OUTPUT_PER_1K"] = price
    return env


def ponder(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "eval", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def jobs_in(tmp_path: Path) -> int:
    db = tmp_path / "data" / "ponder.db"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        return int(conn.execute("select count(*) from jobs").fetchone()[0])


def test_eval_then_strict_replay_end_to_end(sim: Simulator, tmp_path: Path) -> None:
    env = cli_env(tmp_path, sim.url)
    data = write_lines(tmp_path / "d.jsonl", [*PROBLEMS[:2], "oops", *PROBLEMS[2:]])
    strategies = [x for arm in ARMS for x in ("--strategy", arm)]
    out = tmp_path / "out"
    ran = ponder(env, "--dataset", str(data), *strategies, "--concurrency", "4",
                 "--out", str(out), "--name", "arith")  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert f"{data}:3: not valid JSON" in ran.stderr and "skipped 1 bad line(s)" in ran.stderr
    assert "50.0%" in ran.stdout and "75.0%" in ran.stdout
    assert "model calls: 18 live, 0 replayed from journals" in ran.stdout
    results = json.loads((out / "results.json").read_text())
    assert [s["correct"] for s in results["summary"]] == [2, 3, 3]
    assert all((out / f"pareto_{x}.png").stat().st_size > 10_000 for x in ("tokens", "cost"))

    requests = sim.stats.requests
    again = ponder(env, "--replay", str(out / "results.json"), "--out", str(tmp_path / "re"))
    assert again.returncode == 0, again.stderr
    assert sim.stats.requests == requests
    assert "model calls: 0 live, 18 replayed from journals" in again.stdout
    replayed = json.loads((tmp_path / "re" / "results.json").read_text())
    assert [s["accuracy"] for s in replayed["summary"]] == [0.5, 0.75, 0.75]
    assert [r["cost"] for r in replayed["rows"]] == [r["cost"] for r in results["rows"]]


async def _store_preset(data_dir: Path, name: str, spec: dict[str, object]) -> None:
    settings = Settings(data_dir=data_dir, _env_file=None)  # type: ignore[call-arg]
    async with Runtime(settings) as rt:
        await save_preset(rt.sessions, tenant="default", name=name, spec=spec)


def test_a_preset_stored_in_the_local_database_is_an_arm_by_name(
    sim: Simulator, tmp_path: Path
) -> None:
    """What ``ponder calibrate --preset`` writes, ``ponder eval --strategy NAME`` runs."""
    asyncio.run(_store_preset(tmp_path / "data", "short", {"kind": "direct", "max_tokens": 48}))
    data = write_lines(tmp_path / "d.jsonl", PROBLEMS[:2])
    out = tmp_path / "out"
    ran = ponder(cli_env(tmp_path, sim.url), "--dataset", str(data), "--difficulty-probe",
                 "none", "--strategy", "short", "--strategy",
                 '{"preset": "short", "max_tokens": 32}', "--out", str(out))  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    arms = json.loads((out / "results.json").read_text())["strategies"]
    assert [(a["label"], a["params"]["kind"], a["params"]["max_tokens"]) for a in arms] == [
        ("short", "direct", 48),
        ("short max_tokens=32", "direct", 32),
    ]
    assert sim.stats.requests == 4
    unknown = ponder(cli_env(tmp_path, sim.url), "--dataset", str(data),
                     "--strategy", '{"preset": "nope"}', "--out", str(tmp_path / "o2"))  # fmt: skip
    assert unknown.returncode == 2 and "no preset named 'nope'" in unknown.stderr
    assert "short" in unknown.stderr and "Traceback" not in unknown.stderr


def test_reject_mode_exits_2_before_running_anything(sim: Simulator, tmp_path: Path) -> None:
    data = write_lines(tmp_path / "d.jsonl", [PROBLEMS[0], {"question": "q"}, "[]", PROBLEMS[1]])
    result = ponder(cli_env(tmp_path, sim.url), "--dataset", str(data), "--strategy", "direct",
                    "--on-bad-line", "reject", "--out", str(tmp_path / "out"))  # fmt: skip
    assert result.returncode == 2
    assert f"{data}:2: missing 'answer'" in result.stderr
    assert f"{data}:3: expected a JSON object, got list" in result.stderr
    assert "2 bad line(s)" in result.stderr and "nothing was run" in result.stderr
    assert "Traceback" not in result.stderr
    assert sim.stats.requests == 0 and jobs_in(tmp_path) == 0
    assert not (tmp_path / "out").exists()


def test_sigterm_stops_an_eval_like_ctrl_c_with_its_partial_results(
    sim: Simulator, tmp_path: Path
) -> None:
    # docker stop, kill and job schedulers send SIGTERM; a background eval gets no SIGINT.
    sim.set_config(script(latency=Latency(ttft_ms=400)))
    data = write_lines(tmp_path / "d.jsonl", PROBLEMS)
    strategies = [x for arm in ARMS for x in ("--strategy", arm)]
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "eval", "--dataset", str(data), *strategies,
         "--out", str(out), "--name", "cut"],
        cwd=ROOT, env=cli_env(tmp_path, sim.url), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:  # the first arm's 4 rows are in once it says it is done
        seen.append(line)
        if line.startswith(f"{DIRECT_LABEL}: done,"):
            break
    assert proc.poll() is None, seen
    proc.send_signal(signal.SIGTERM)
    output = "".join(seen) + proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, output
    assert "interrupted; partial results in" in output and "Traceback" not in output
    results = json.loads((out / "results.json").read_text())
    assert results["interrupted"] is True
    assert 4 <= len(results["rows"]) < 12, (output, results)
    assert "**interrupted**" in (out / "report.md").read_text()
