"""Dashboard fixes of issue 18, each checked in headless Chromium against the live stack
of ``test_dashboard`` (API, Celery worker, PostgreSQL, Redis, simulator): search and
filters run by the server over every job, the budget chart scaled to the usage, replay's
usage card following the cursor, a valid default in the new-job form, the diff telling
"answers differ" from "paths differ" with the overrides and a text diff, dates in lists,
and Pareto labels that do not overlap."""

# ruff: noqa: F811 - `dash` and `stack` are fixtures imported from test_dashboard

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest

from core.simulator.config import Rule
from core.simulator.server import Simulator
from tests.e2e.conftest import write_synthetic_trace
from tests.e2e.test_dashboard import (  # noqa: F401 - fixtures
    ADAPTIVE_3,
    ALTERNATING,
    PAGE_SIZE,
    QUESTION,
    Dashboard,
    Stack,
    dash,
    stack,
)
from tests.fixtures.worker import redis_url  # noqa: F401 - a fixture
from tests.integration.test_api_celery import script

pytestmark = [pytest.mark.redis, pytest.mark.postgres]
expect = pytest.importorskip("playwright.sync_api").expect

DATE_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")
# The highest row (0 = top) where the budget chart drew its blue usage curve, in the
# right fifth of the canvas (where a one-call job's step rises; the blue label is left).
HIGHEST_BLUE = """(canvas) => {
  const ctx = canvas.getContext('2d');
  const { width, height } = canvas;
  const data = ctx.getImageData(0, 0, width, height).data;
  for (let y = 0; y < height; y++) for (let x = Math.floor(width * 0.8); x < width; x++) {
    const i = 4 * (y * width + x);
    if (data[i + 3] > 200 && data[i + 2] > 150 && data[i] < 90) return y / height;
  }
  return null;
}"""


def settled(dash: Dashboard) -> None:
    """The jobs view shows the server's answer to its current filters."""
    dash.page.wait_for_selector(".jobs-view:not([data-pending])", timeout=10_000)


def set_filter(dash: Dashboard, name: str, value: str) -> None:
    dash.page.fill(f"input[name={name}]", value)
    dash.page.locator(f"input[name={name}]").dispatch_event("change")
    settled(dash)


def test_search_and_filters_run_on_the_server_over_every_job(
    dash: Dashboard, simulator: Simulator
) -> None:
    simulator.set_config(script(Rule(replies=["The answer is 5."])))
    tag = uuid.uuid4().hex[:6]
    jobs = [dash.stack.submit(question=f"Filter {tag} #{i}", strategy="direct") for i in range(6)]
    large_spec = {"kind": "direct", "role": "large"}
    large = dash.stack.submit(question=f"Filter {tag} large", strategy=large_spec)
    priced = write_synthetic_trace(dash.stack.database_url, tenant=dash.stack.tenant, spans=30)
    page = dash.page
    dash.open("/jobs", "jobs")
    assert page.locator("tr.job-row").count() == PAGE_SIZE
    assert page.locator(f"tr.job-row[data-id='{jobs[0]['id']}']").count() == 0  # not loaded

    # The oldest job is on no loaded page: the server finds it.
    set_filter(dash, "q", f"{tag} #0")
    assert page.locator("tr.job-row").count() == 1
    assert page.locator("tr.job-row").first.get_attribute("data-id") == jobs[0]["id"]
    assert "search and filters cover all jobs" in dash.text(".list-status")
    assert f"q={tag}" in page.url

    # A role's model, among the search's matches.
    set_filter(dash, "q", f"Filter {tag}")
    assert page.locator("tr.job-row").count() == PAGE_SIZE
    page.click("text=More filters")
    set_filter(dash, "model", "sim-large")
    assert page.locator("tr.job-row").count() == 1
    assert page.locator("tr.job-row").first.get_attribute("data-id") == large["id"]
    set_filter(dash, "model", "")
    set_filter(dash, "q", "")

    # Cost from the usage JSON: only the synthetic job has priced calls.
    set_filter(dash, "min_cost", "0.000001")
    assert page.locator("tr.job-row").count() == 1
    assert page.locator("tr.job-row").first.get_attribute("data-id") == priced
    # A bad range: the server's 422 names the field, and the field is marked.
    set_filter(dash, "max_cost", "0.0000001")
    expect(page.locator(".error-box")).to_contain_text("max_cost:")
    assert page.locator("input[name=max_cost]").get_attribute("aria-invalid") == "true"
    page.click("button.clear-filters")
    settled(dash)
    assert page.locator(".error-box").count() == 0
    assert page.locator("tr.job-row").count() == PAGE_SIZE

    # A date range: created before any of these jobs existed.
    set_filter(dash, "created_before", "2020-01-01T00:00")
    assert dash.text("td.empty") == "No job matches these filters."
    dash.shot("jobs-filters")


def test_the_created_column_shows_date_and_time(dash: Dashboard, simulator: Simulator) -> None:
    simulator.set_config(script(Rule(replies=["The answer is 5."])))
    job = dash.stack.submit(question=f"{QUESTION} dated", strategy="direct")
    dash.open("/jobs", "jobs")
    cell = dash.page.locator(f"tr.job-row[data-id='{job['id']}'] td.created-cell")
    assert DATE_TIME.match(cell.inner_text()), cell.inner_text()
    dash.open(f"/jobs/{job['id']}", "job")
    created = re.search(r"created (\S+ \S+) ·", dash.text(".job-head .meta"))
    assert created and DATE_TIME.match(created.group(1)), dash.text(".job-head .meta")


def test_the_new_job_form_defaults_to_a_valid_spec(dash: Dashboard, simulator: Simulator) -> None:
    simulator.set_config(script(Rule(replies=["The answer is 5."])))
    page = dash.page
    dash.open("/jobs", "jobs")
    page.click("text=New job")
    expect(page.locator("select[name=kind]")).to_have_value("self_consistency")
    assert page.input_value("input[name=params]") == '{"n": 5}'
    page.fill("textarea[name=question]", QUESTION)  # nothing else touched
    page.click("button:text('Submit job')")
    page.wait_for_url(re.compile(r"#/jobs/[0-9a-f]{32}"))
    job = dash.stack.wait(dash.job_id_from_url())
    assert job["status"] == "succeeded", job["error"]
    assert (job["strategy"]["kind"], job["strategy"]["n"], job["result"]["answer"]) == (
        "self_consistency", 5, "5")  # fmt: skip


def test_the_budget_chart_is_scaled_to_the_usage(dash: Dashboard, simulator: Simulator) -> None:
    simulator.set_config(script(Rule(replies=["The answer is 5."])))
    job = dash.stack.submit(strategy="direct", budget={"max_tokens": 50_000})
    used = job["usage"]["completion_tokens"]
    assert 0 < used < 100
    dash.open(f"/jobs/{job['id']}", "job")
    chart = dash.page.locator("canvas.budget-chart")
    # The scale is the usage's, not the budget's; the budget is a marker above it.
    assert chart.get_attribute("data-used") == str(used)
    assert used <= int(chart.get_attribute("data-scale-max") or 0) < 2 * used
    assert chart.get_attribute("data-budget-marker") == "above"
    # Drawn: the curve reaches the upper part of the chart, not a flat line at the bottom.
    top = chart.evaluate(HIGHEST_BLUE)
    assert top is not None and top < 0.4, top
    assert f"{used} / 50,000" in dash.text(".budget-meters")
    dash.shot("budget-scaled")


def test_the_replay_usage_card_follows_the_cursor(dash: Dashboard, simulator: Simulator) -> None:
    simulator.set_config(script(ALTERNATING))
    job = dash.stack.submit(strategy=ADAPTIVE_3)
    events = dash.stack.get(f"/v1/jobs/{job['id']}/trace")["events"]
    calls = [e for e in events if e["type"] == "model_call"]
    page = dash.page
    dash.open(f"/jobs/{job['id']}", "job")
    final = (dash.text(".usage-tokens"), dash.text(".usage-latency"))
    usage = job["usage"]
    assert final[0] == f"{usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion"

    for _ in range(3):  # job, strategy, the first call
        page.keyboard.press("ArrowRight")
    assert dash.text(".usage-card h3") == "USAGE AT STEP 3"
    first = calls[0]
    assert dash.text(".usage-calls") == "1"
    assert dash.text(".usage-tokens") == (
        f"{first['prompt_tokens']} prompt + {first['completion_tokens']} completion"
    )
    assert dash.text(".usage-tokens") != final[0]
    # The time reached at the step, not the finished job's.
    assert dash.text(".usage-card dt >> nth=3") == "elapsed"
    assert dash.text(".usage-latency") != final[1]
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")  # the second call
    assert dash.text(".usage-calls") == "2"
    prompt = calls[0]["prompt_tokens"] + calls[1]["prompt_tokens"]
    assert dash.text(".usage-tokens").startswith(f"{prompt} prompt + ")
    page.keyboard.press("Escape")
    assert (dash.text(".usage-tokens"), dash.text(".usage-latency")) == final


def diff_page(dash: Dashboard, a: dict[str, Any], b: dict[str, Any]) -> Any:
    dash.open(f"/diff/{a['id']}/{b['id']}", "diff")
    return dash.page


def test_the_diff_tells_answers_from_paths_lists_overrides_and_diffs_texts(
    dash: Dashboard, simulator: Simulator
) -> None:
    simulator.set_config(script(Rule(replies=["The answer is 5."])))
    question = f"{QUESTION} ({uuid.uuid4().hex[:6]})"
    base = dash.stack.submit(question=question, strategy="direct")
    warmer = dash.stack.submit(question=question, strategy={"kind": "direct", "temperature": 0.3})

    # Same answer, other calls: not "different", and the override behind it is listed.
    page = diff_page(dash, base, warmer)
    assert dash.text(".verdict h3") == "SAME ANSWER, PATHS DIFFER"
    assert (dash.text(".answer-a"), dash.text(".answer-b")) == ("5", "5")
    row = page.locator(".overrides tbody tr")
    assert row.count() == 1 and row.first.get_attribute("data-param") == "temperature"
    assert row.first.inner_text().split("\t") == ["temperature", "0", "0.3"]
    # The first divergent call's prompt as a line diff: its temperature; the same response.
    expect(page.locator(".text-diff .diff-prompt .line.del")).to_have_text(["- temperature: 0"])
    expect(page.locator(".text-diff .diff-prompt .line.add")).to_have_text(["+ temperature: 0.3"])
    assert dash.text(".text-diff .diff-response h4") == "Response (the same)"

    # Another answer on the same spec: "answers differ", no override, the response diffed.
    simulator.set_config(script(Rule(replies=["The answer is 7."])))
    seven = dash.stack.submit(question=question, strategy="direct")
    page = diff_page(dash, base, seven)
    assert dash.text(".verdict h3") == "ANSWERS DIFFER"
    assert page.locator(".verdict").get_attribute("data-paths") == "differ"
    assert page.locator(".overrides-card .no-overrides").count() == 1
    expect(page.locator(".text-diff .diff-response .line.del")).to_have_text(["- The answer is 5."])
    expect(page.locator(".text-diff .diff-response .line.add")).to_have_text(["+ The answer is 7."])
    assert page.locator(".text-diff .diff-prompt .line.del").count() == 0
    dash.shot("diff-text")

    # A job against itself: identical.
    diff_page(dash, base, base)
    assert dash.text(".verdict h3") == "IDENTICAL"
    assert dash.page.locator(".text-diff").is_hidden()


BBOX = "e => { const b = e.getBBox(); return {x: b.x, y: b.y, width: b.width, height: b.height}; }"


def overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    """Two boxes share more than a quarter of a unit each way."""
    return (
        a["x"] + a["width"] > b["x"] + 0.25
        and b["x"] + b["width"] > a["x"] + 0.25
        and a["y"] + a["height"] > b["y"] + 0.25
        and b["y"] + b["height"] > a["y"] + 0.25
    )


def test_pareto_labels_do_not_overlap(dash: Dashboard) -> None:
    # Six arms within a few tokens and points of each other: their labels collide unless
    # placed apart.
    arms = [
        f"self_consistency n={n} temperature=0.{n} (arm {i})" for i, n in enumerate(range(4, 10))
    ]
    with dash.stack.client() as client:
        created = client.post("/v1/experiments", json={
            "name": "crowded", "problems": 5,
            "arms": [{"label": label, "spec": {"kind": "self_consistency"},
                      "params": {"kind": "self_consistency"}} for label in arms],
        })  # fmt: skip
        assert created.status_code == 201, created.text
        experiment_id = created.json()["id"]
        rows = [
            {"problem_id": f"p{p}", "problem_index": p, "strategy": label, "status": "succeeded",
             "answer": "5", "expected": "5", "correct": p < 3 + (i % 2),
             "completion_tokens": 100 + i, "latency_s": 1.0 + 0.01 * i, "cost": None}
            for i, label in enumerate(arms) for p in range(5)
        ]  # fmt: skip
        stored = client.post(f"/v1/experiments/{experiment_id}/rows", json={"rows": rows})
        assert stored.status_code == 200, stored.text
    page = dash.page
    dash.open(f"/experiments/{experiment_id}", "experiment")
    labels = page.locator("svg.pareto text.point-label")
    assert labels.count() == len(arms)
    # Glyph boxes in the chart's own units (getBBox: without the halo's stroke).
    view = page.locator("svg.pareto").evaluate(
        "s => [s.viewBox.baseVal.width, s.viewBox.baseVal.height]"
    )
    boxes = [labels.nth(i).evaluate(BBOX) for i in range(len(arms))]
    points = page.locator("svg.pareto g.point")
    for i, label in enumerate(boxes):
        assert label["y"] >= 0 and label["y"] + label["height"] <= view[1], arms[i]
        assert label["x"] + label["width"] <= view[0], (arms[i], label, view)
        for other in boxes[i + 1 :]:
            assert not overlap(label, other), (label, other)
        # No other arm's marker under the label's letters.
        arm = labels.nth(i).get_attribute("data-arm")
        for j in range(points.count()):
            if points.nth(j).get_attribute("data-arm") != arm:
                circle = points.nth(j).locator("circle").evaluate(BBOX)
                assert not overlap(label, circle), (arms[i], j)
    dash.shot("pareto-crowded")
