"""An experiment made by `ponder eval --url` against the live stack (API, Celery worker,
PostgreSQL, Redis, simulator), opened in headless Chromium: the list, the Pareto chart,
the problems × arms grid, a cell's job, and two cells in the diff view.

Scripted replies (``tests.evals.conftest``): `direct` on small answers 5 ✓, 7 ✗, 8 ✗;
`direct` on large answers 5 ✓, 6 ✓, 9 ✓.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from core.simulator.server import Simulator
from tests.e2e.conftest import ROOT
from tests.e2e.test_dashboard import Dashboard, Stack, dash, stack  # noqa: F401 - fixtures
from tests.evals.conftest import (
    DIRECT,
    DIRECT_LABEL,
    LARGE,
    LARGE_LABEL,
    PROBLEMS,
    script,
    write_lines,
)
from tests.fixtures.worker import redis_url  # noqa: F401 - a fixture

pytestmark = [pytest.mark.redis, pytest.mark.postgres]
pytest.importorskip("playwright.sync_api")


def run_eval(live: Stack, tmp_path: Path) -> str:
    """`ponder eval --url` on three problems × two arms; the experiment id it printed."""
    dataset = write_lines(tmp_path / "three.jsonl", PROBLEMS[:3])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PONDER_")}
    env["PONDER_DATA_DIR"] = str(tmp_path / "data")
    ran = subprocess.run(
        [sys.executable, "-m", "app.cli", "eval", "--url", live.url, "--api-key", live.key,
         "--dataset", str(dataset), "--strategy", DIRECT, "--strategy", LARGE,
         "--concurrency", "3", "--name", "three", "--out", str(tmp_path / "out")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    found = re.search(r"experiment: ([0-9a-f]{32})", ran.stderr)
    assert found, ran.stderr
    return found.group(1)


def test_an_eval_opens_as_an_experiment_with_chart_grid_jobs_and_diff(
    dash: Dashboard,  # noqa: F811 - the fixture
    simulator: Simulator,
    tmp_path: Path,
) -> None:
    simulator.set_config(script())
    experiment_id = run_eval(dash.stack, tmp_path)
    page = dash.page

    dash.open("/experiments", "experiments")
    row = page.locator(f"tr.experiment-row[data-id='{experiment_id}']")
    assert "three.jsonl" in row.inner_text()
    row.locator("a", has_text="three").click()
    dash.wait_ready("experiment")
    assert page.url.endswith(f"#/experiments/{experiment_id}")

    # The arms' table and the Pareto chart: two points with whiskers. Both arms spend 5
    # tokens a problem, so large (3/3) dominates small (1/3): it alone is the frontier.
    summary = page.locator("table.arm-summary tbody tr")
    assert summary.nth(0).inner_text().startswith(DIRECT_LABEL)
    assert "33.3%" in summary.nth(0).inner_text() and "100.0%" in summary.nth(1).inner_text()
    chart = page.locator("svg.pareto")
    assert chart.get_attribute("data-axis") == "tokens"
    assert chart.locator("g.point").count() == 2
    assert chart.locator("g.point line.whisker").count() == 6
    assert chart.locator("g.point.front").get_attribute("data-arm") == "1"
    assert chart.locator("text.point-label").all_text_contents() == [DIRECT_LABEL, LARGE_LABEL]
    page.select_option("select[name=axis]", "latency")
    assert page.locator("svg.pareto").get_attribute("data-axis") == "latency"
    assert page.url.endswith("?axis=latency")

    # The grid: problems × arms, ✓/✗ as the scripts say.
    cell = "a.cell[data-arm='{}'][data-problem='{}']"
    marks = [[page.locator(cell.format(arm, p)).inner_text() for p in range(3)] for arm in (0, 1)]
    assert marks == [["✓", "✗", "✗"], ["✓", "✓", "✓"]]
    dash.shot("experiment")

    # A cell opens its job.
    wrong = page.locator(cell.format(0, 1))
    small_job = wrong.get_attribute("data-job")
    wrong.click()
    dash.wait_ready("job")
    assert dash.job_id_from_url() == small_job
    assert dash.text(".answer-big") == "7"

    # Two cells (picked with the button) open side by side in the diff view.
    page.go_back()
    dash.wait_ready("experiment")
    large_job = page.locator(cell.format(1, 1)).get_attribute("data-job")
    page.click("button.pick-toggle")
    page.click(cell.format(0, 1))
    assert page.locator("a.cell.picked").count() == 1
    page.click(cell.format(1, 1))
    dash.wait_ready("diff")
    assert page.url.endswith(f"#/diff/{small_job}/{large_job}")
    assert dash.text(".answer-a") == "7" and dash.text(".answer-b") == "6"
