"""A pool without prices has an unknown cost: "n/a" (JSON null, ``cost_known: false``),
never 0.000000 — in ``ponder solve`` (text and JSON) and in ``ponder eval``'s table,
report and results, cost-of-pass included. A priced pool (0 counts as a price) still
gives numbers.

The real CLI runs as a subprocess against the scripted simulator; pools come from
``PONDER_POOLS__*`` as an operator sets them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from core.simulator.config import Rule, SimulatorConfig
from core.simulator.server import Simulator

ROOT = Path(__file__).resolve().parents[2]
QUESTION = "What is 2 + 3?"
REPLY = "2 + 3 = 5. The answer is 5."  # 11 tokens by the simulator's tokenizer


def cli_env(tmp_path: Path, sim_url: str, price: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PONDER_")}
    env["PONDER_DATA_DIR"] = str(tmp_path / "data")
    for role, model in (("SMALL", "sim-small"), ("LARGE", "sim-large")):
        env[f"PONDER_POOLS__{role}__ENDPOINTS"] = json.dumps([sim_url])
        env[f"PONDER_POOLS__{role}__MODEL"] = model
        env[f"PONDER_POOLS__{role}__KIND"] = "simulator"
        if price is not None:
            env[f"PONDER_POOLS__{role}__PRICE_OUTPUT_PER_1K"] = price
    return env


def ponder(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.fixture
def sim(simulator: Simulator) -> Simulator:
    simulator.set_config(
        SimulatorConfig(models=["sim-small", "sim-large"], rules=[Rule(replies=[REPLY])])
    )
    return simulator


def test_solve_without_prices_says_n_a_in_json_and_text(sim: Simulator, tmp_path: Path) -> None:
    env = cli_env(tmp_path, sim.url, price=None)
    ran = ponder(env, "solve", QUESTION, "--strategy", "direct", "--json")
    assert ran.returncode == 0, ran.stderr
    usage = json.loads(ran.stdout)["usage"]
    assert (usage["cost"], usage["cost_known"]) == (None, False)
    assert usage["by_role"]["small"]["cost"] is None
    assert usage["completion_tokens"] == 11  # the call itself is counted as ever

    text = ponder(env, "solve", QUESTION, "--strategy", "direct")
    assert text.returncode == 0, text.stderr
    assert "total cost n/a (a pool has no prices)" in text.stdout
    row = next(line for line in text.stdout.splitlines() if line.strip().startswith("small"))
    assert row.split()[-1] == "n/a"
    assert "0.000000" not in text.stdout


@pytest.mark.parametrize(("price", "cost"), [("2.0", "0.022000"), ("0", "0.000000")])
def test_solve_with_prices_gives_numbers(
    sim: Simulator, tmp_path: Path, price: str, cost: str
) -> None:
    # 11 generated tokens at 2.0 per 1k; an explicit 0 is a known price (a free model).
    env = cli_env(tmp_path, sim.url, price=price)
    ran = ponder(env, "solve", QUESTION, "--strategy", "direct", "--json")
    assert ran.returncode == 0, ran.stderr
    usage = json.loads(ran.stdout)["usage"]
    assert usage["cost_known"] is True
    assert f"{usage['cost']:.6f}" == cost
    text = ponder(env, "solve", QUESTION, "--strategy", "direct")
    assert f"total cost {cost}" in text.stdout and "n/a" not in text.stdout


def test_solve_with_a_cost_limit_needs_prices(sim: Simulator, tmp_path: Path) -> None:
    env = cli_env(tmp_path, sim.url, price=None)
    ran = ponder(env, "solve", QUESTION, "--strategy", "direct", "--budget-cost", "1", "--json")
    assert ran.returncode != 0
    error = json.loads(ran.stdout)["error"]
    assert error["field"] == "budget.max_cost", error
    requests = sim.stats.requests
    priced = cli_env(tmp_path, sim.url, price="1.0")
    ok = ponder(priced, "solve", QUESTION, "--strategy", "direct", "--budget-cost", "1", "--json")
    assert ok.returncode == 0, ok.stderr
    assert sim.stats.requests == requests + 1


def _eval(env: dict[str, str], tmp_path: Path, name: str) -> tuple[str, dict[str, Any], str]:
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(json.dumps({"question": QUESTION, "answer": a}) + "\n" for a in ("5", "5", "6"))
    )
    out = tmp_path / name
    ran = ponder(env, "eval", "--dataset", str(data), "--strategy", "direct",
                 "--out", str(out), "--name", name)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    results = json.loads((out / "results.json").read_text())
    return ran.stdout, results, (out / "report.md").read_text()


def table_cells(report: str) -> dict[str, str]:
    """The report's summary row for ``direct``, by column name."""
    lines = report.splitlines()
    header = next(line for line in lines if line.startswith("| strategy"))
    row = next(line for line in lines if line.startswith("| direct"))
    names = [c.strip() for c in header.strip("|").split("|")]
    return dict(zip(names, [c.strip() for c in row.strip("|").split("|")], strict=True))


def test_eval_without_prices_reports_cost_and_cost_of_pass_as_n_a(
    sim: Simulator, tmp_path: Path
) -> None:
    stdout, results, report = _eval(cli_env(tmp_path, sim.url, price=None), tmp_path, "free")
    [summary] = results["summary"]
    assert summary["accuracy"] == pytest.approx(2 / 3)
    assert summary["cost_known"] is False
    assert (summary["mean_cost"], summary["total_cost"], summary["cost_of_pass"]) == (None,) * 3
    assert summary["cost_of_pass_infinite"] is False
    assert [r["cost"] for r in results["rows"]] == [None] * 3
    cells = table_cells(report)
    assert (cells["mean cost"], cells["cost-of-pass"]) == ("n/a", "n/a")
    assert "n/a" in stdout and "0.000000" not in stdout and "0.000000" not in report


def test_eval_with_prices_reports_numbers(sim: Simulator, tmp_path: Path) -> None:
    _, results, report = _eval(cli_env(tmp_path, sim.url, price="1.0"), tmp_path, "priced")
    [summary] = results["summary"]
    # 11 generated tokens per problem at 1.0 per 1k; two of three correct.
    assert summary["cost_known"] is True
    assert summary["mean_cost"] == pytest.approx(0.011)
    assert summary["cost_of_pass"] == pytest.approx(0.011 / (2 / 3))
    cells = table_cells(report)
    assert (cells["mean cost"], cells["cost-of-pass"]) == ("0.011000", "0.016500")
