"""`ponder eval` in-process: numbers by hand, outputs, strict and what-if replays."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from core.db import repo
from core.runtime import Runtime
from core.simulator.config import Failure, Latency
from core.simulator.server import Simulator
from evals.arms import parse_arms
from evals.backends import LocalBackend
from evals.dataset import load_dataset
from evals.results import EvalRun, load_results
from evals.runs import Options, evaluate, replay
from tests.evals.conftest import (
    ARMS,
    DIRECT_LABEL,
    LARGE_LABEL,
    PROBLEMS,
    VOTE_LABEL,
    script,
    write_lines,
)


async def run_eval(rt: Runtime, dataset: Path, out: Path, **options: object) -> EvalRun:
    opts = Options(out=out, name="arith", concurrency=4, **options)  # type: ignore[arg-type]
    return await evaluate(LocalBackend(rt), load_dataset(dataset), parse_arms(ARMS), opts)


def by_label(run: EvalRun) -> dict[str, dict[str, object]]:
    return {s["strategy"]: s for s in run.to_json()["summary"]}


async def test_three_strategies_numbers_by_hand_and_outputs(
    rt: Runtime, sim: Simulator, dataset: Path, tmp_path: Path
) -> None:
    run = await run_eval(rt, dataset, tmp_path / "out")
    s = by_label(run)
    assert [x["strategy"] for x in run.to_json()["summary"]] == [
        DIRECT_LABEL, VOTE_LABEL, LARGE_LABEL,
    ]  # fmt: skip
    assert [s[k]["correct"] for k in s] == [2, 3, 3]
    assert [s[k]["accuracy"] for k in s] == [0.5, 0.75, 0.75]
    # Wilson 95% for 2/4 is [0.150, 0.850].
    assert s[DIRECT_LABEL]["ci_low"] == pytest.approx(0.1500, abs=1e-4)
    assert s[DIRECT_LABEL]["ci_high"] == pytest.approx(0.8500, abs=1e-4)
    # direct: 5 + 5 + 5 + 7 tokens; the vote: 3 + 3 + 2 + 2 samples of 5; large: 4 x 5.
    assert s[DIRECT_LABEL]["mean_tokens"] == 5.5
    assert s[VOTE_LABEL]["mean_tokens"] == 12.5
    assert s[VOTE_LABEL]["mean_tokens_by_role"] == {"small": 12.5}
    assert s[LARGE_LABEL]["mean_tokens_by_role"] == {"large": 5.0}
    # Prices: 1.0 (small) and 10.0 (large) per 1k generated tokens.
    assert s[DIRECT_LABEL]["mean_cost"] == pytest.approx(0.0055)
    assert s[DIRECT_LABEL]["cost_of_pass"] == pytest.approx(0.0055 / 0.5)
    assert s[VOTE_LABEL]["cost_of_pass"] == pytest.approx(0.0125 / 0.75)
    assert s[LARGE_LABEL]["mean_cost"] == pytest.approx(0.05)
    assert s[LARGE_LABEL]["total_cost"] == pytest.approx(0.2)
    assert sim.stats.requests == 4 + 10 + 4
    assert run.calls() == (18, 0)

    rows = {(r.strategy, r.problem_id): r for r in run.rows}
    p4 = rows[(DIRECT_LABEL, "p4")]
    assert (p4.answer, p4.expected, p4.correct, p4.tokens) == ("3", "3", True, {"small": 7})
    assert rows[(VOTE_LABEL, "p3")].answer == "8" and rows[(VOTE_LABEL, "p3")].calls == 2
    # Every row is an ordinary job: its trace opens with `ponder trace <id>`.
    async with rt.sessions() as session:
        job = await repo.get_job(session, rows[(LARGE_LABEL, "p2")].job_id or "")
        assert job is not None and job.result is not None
        assert job.question == "What is 10 - 4?" and job.result["answer"] == "6"
        assert job.seed == 1  # seed 0 + problem index

    out = tmp_path / "out"
    data = load_results(out / "results.json")
    assert len(data["rows"]) == 12
    row = data["rows"][0]
    assert {"problem_id", "strategy", "job_id", "answer", "expected", "correct", "tokens",
            "latency_s", "cost"} <= set(row)  # fmt: skip
    assert (row["problem_id"], row["strategy"], row["correct"]) == ("p1", DIRECT_LABEL, True)
    report = (out / "report.md").read_text()
    assert "| direct | 4 | 50.0% | 15.0% – 85.0% | 5.5 | small 5.5 |" in report
    assert "![accuracy vs" not in report and "(pareto_cost.png)" in report
    for name in ("pareto_tokens.png", "pareto_latency.png", "pareto_cost.png"):
        png = (out / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(png) > 10_000


async def test_strict_replay_reproduces_every_number_with_zero_calls(
    rt: Runtime, sim: Simulator, dataset: Path, tmp_path: Path
) -> None:
    first = await run_eval(rt, dataset, tmp_path / "out")
    requests = sim.stats.requests
    source = tmp_path / "out" / "results.json"
    again = await replay(
        LocalBackend(rt), load_results(source), source, [], Options(tmp_path / "re", "re")
    )
    assert sim.stats.requests == requests
    assert again.calls() == (0, 18)
    before, after = first.to_json(), again.to_json()
    assert after["summary"] == [{**s, "live_calls": 0, "replayed_calls": s["live_calls"]}
                                for s in before["summary"]]  # fmt: skip
    for old, new in zip(before["rows"], after["rows"], strict=True):
        assert new["parent_job_id"] == old["job_id"] != new["job_id"]
        same = ("answer", "correct", "tokens", "prompt_tokens", "cost", "latency_s", "calls")
        assert {k: new[k] for k in same} == {k: old[k] for k in same}
    assert "0 live, 18 replayed" in (tmp_path / "re" / "report.md").read_text()


async def test_param_changed_replay_calls_only_what_differs(
    rt: Runtime, sim: Simulator, dataset: Path, tmp_path: Path
) -> None:
    await run_eval(rt, dataset, tmp_path / "out")
    requests = sim.stats.requests
    source = tmp_path / "out" / "results.json"
    # n=5 applies to the only strategy with an `n`; the two direct arms replay strictly.
    again = await replay(
        LocalBackend(rt), load_results(source), source, [("n", 5)], Options(tmp_path / "re", "re")
    )
    # The vote re-issues its first calls (journal hits), then samples on until the
    # leader is unbeatable: p1 +1 (5), p2 +1 (6), p3 +2 (9, 8), p4 +1 (3).
    assert sim.stats.requests - requests == 5
    assert again.calls() == (5, 4 + 10 + 4)
    s = by_label(again)
    vote = f"{VOTE_LABEL} -> n=5"
    assert list(s) == [DIRECT_LABEL, vote, LARGE_LABEL]
    assert s[vote]["mean_tokens"] == (20 + 20 + 20 + 15) / 4
    assert [s[k]["correct"] for k in s] == [2, 3, 3]
    assert (s[vote]["live_calls"], s[DIRECT_LABEL]["live_calls"]) == (5, 0)
    assert again.replay_of is not None and again.replay_of["changes"] == {VOTE_LABEL: {"n": 5}}


async def test_match_budget_gives_everyone_the_largest_pilot_mean(
    rt: Runtime, dataset: Path, tmp_path: Path
) -> None:
    run = await run_eval(rt, dataset, tmp_path / "out", match_budget=True, pilot=2)
    assert run.pilot is not None
    # Pilot on p1, p2: direct 5 and 5, the vote 15 and 15, large 5 and 5 -> 15 tokens.
    assert run.pilot["mean_tokens"] == {DIRECT_LABEL: 5.0, VOTE_LABEL: 15.0, LARGE_LABEL: 5.0}
    assert run.settings["budget"] == {"max_tokens": 15}
    async with rt.sessions() as session:
        for row in run.rows:
            job = await repo.get_job(session, row.job_id or "")
            assert job is not None and job.budget == {"max_tokens": 15}
    # 15 tokens are under the 16-token minimum a call may be sent with: every job ends
    # budget-exhausted with no answer, and says so.
    assert all(r.budget_exhausted and r.answer is None for r in run.rows)
    assert (
        "budget per job: 15 tokens (--match-budget" in (tmp_path / "out" / "report.md").read_text()
    )


async def test_bad_lines_are_skipped_and_reported(rt: Runtime, tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "d.jsonl", [PROBLEMS[0], "{not json", {"question": "q"}, PROBLEMS[1]]
    )
    dataset = load_dataset(path)
    assert [(b.line, b.reason) for b in dataset.bad_lines] == [
        (2, "not valid JSON (Expecting property name enclosed in double quotes, column 2)"),
        (3, "missing 'answer'"),
    ]
    opts = Options(tmp_path / "out", "skip", concurrency=2)
    run = await evaluate(LocalBackend(rt), dataset, parse_arms(["direct"]), opts)
    assert [r.problem_id for r in run.rows_of(run.arms[0])] == ["p1", "p2"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "2 bad lines skipped" in report and "- line 3: missing 'answer'" in report
    assert json.loads((tmp_path / "out" / "results.json").read_text())["bad_lines"][0]["line"] == 2


async def test_failed_job_is_incorrect_and_listed(
    rt: Runtime, sim: Simulator, dataset: Path, tmp_path: Path
) -> None:
    # A 400 is not retried: the job fails at once.
    sim.set_config(script(failures=[Failure(kind="status", status=400, match="10 - 4")]))
    run = await evaluate(
        LocalBackend(rt), load_dataset(dataset), parse_arms(["direct"]),
        Options(tmp_path / "out", "fail"),
    )  # fmt: skip
    failed = [r for r in run.rows if r.status != "succeeded"]
    assert [(r.problem_id, r.correct) for r in failed] == [("p2", False)]
    assert failed[0].error is not None and failed[0].job_id is not None
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Failed jobs (1, counted as incorrect)" in report
    assert f"| p2 | direct | {failed[0].job_id} | failed |" in report


async def test_interrupt_writes_partial_results(
    rt: Runtime, sim: Simulator, dataset: Path, tmp_path: Path
) -> None:
    sim.set_config(script(latency=Latency(ttft_ms=150)))
    first_row = asyncio.Event()

    class Watch:
        def start(self, label: str, total: int) -> None:
            pass

        def advance(self, label: str, correct: bool) -> None:
            first_row.set()

    out = tmp_path / "out"
    task = asyncio.create_task(
        evaluate(LocalBackend(rt), load_dataset(dataset), parse_arms(ARMS),
                 Options(out, "cut"), Watch())
    )  # fmt: skip
    await asyncio.wait_for(first_row.wait(), 10)
    task.cancel()  # what Ctrl-C does to `asyncio.run`'s main task
    with pytest.raises(asyncio.CancelledError):
        await task
    data = json.loads((out / "results.json").read_text())
    assert data["interrupted"] is True
    assert 1 <= len(data["rows"]) < 12
    assert "**interrupted**" in (out / "report.md").read_text()
    assert (out / "pareto_tokens.png").exists()
