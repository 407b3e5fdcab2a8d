"""scripts/goals_table.py pools runs by arm and judges each goal by its stated bounds."""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

SCRIPT = Path("scripts/goals_table.py")
_spec = importlib.util.spec_from_file_location("goals_table", SCRIPT)
assert _spec is not None and _spec.loader is not None
g = importlib.util.module_from_spec(_spec)
sys.modules["goals_table"] = g  # dataclasses look their module up while it loads
_spec.loader.exec_module(g)

SPECS = {
    g.LARGE: {"kind": "direct", "role": "large"},
    g.ROUTER: json.loads(Path("core/shipped_presets.json").read_text())[g.ROUTER]["spec"],
    g.SMALL: {"kind": "direct", "role": "small"},
    g.SC_FIXED: {
        "kind": "self_consistency",
        "role": "small",
        "n": 8,
        "executor": "python",
        "max_tokens": 384,
    },
}
SPECS[g.SC_ADAPTIVE] = {**SPECS[g.SC_FIXED], "adaptive": True, "batch_size": 2}


def _row(label: str, i: int, correct: bool, tokens: int, latency: float) -> dict[str, Any]:
    return {
        "problem_id": f"p{i}", "problem_index": i, "strategy": label, "job_id": f"{label}-{i}",
        "status": "succeeded", "answer": "1" if correct else "2", "expected": "1",
        "correct": correct, "tokens": {"x": tokens}, "prompt_tokens": {}, "completion_tokens":
        tokens, "calls": 1, "latency_s": latency, "cost": None,
    }  # fmt: skip


def _run(path: Path, first: int, arms: dict[str, tuple[int, int, float]]) -> Path:
    """One results.json of 10 problems: per arm (problems right, tokens, latency)."""
    rows = [
        _row(label, first + i, i < right, tokens, latency)
        for label, (right, tokens, latency) in arms.items()
        for i in range(10)
    ]
    strategies = [{"label": label, "spec": SPECS[label]} for label in arms]
    path.write_text(json.dumps({"format": "ponder-eval/1", "strategies": strategies, "rows": rows}))
    return path


def test_runs_pool_by_arm_and_goals_are_judged_at_their_bounds(tmp_path: Path) -> None:
    # Large 6+6 of 20; router 5+6 of 20 (-5 points, 2 halves); times 10 s against 7.9 s.
    first = _run(tmp_path / "a.json", 0, {
        g.LARGE: (6, 300, 10.0), g.ROUTER: (5, 100, 7.9), g.SMALL: (3, 250, 5.0),
        g.SC_FIXED: (5, 1000, 30.0), g.SC_ADAPTIVE: (5, 600, 25.0),
    })  # fmt: skip
    second = _run(tmp_path / "b.json", 10, {
        g.LARGE: (6, 300, 10.0), g.ROUTER: (6, 100, 7.9), g.SMALL: (3, 250, 5.0),
        g.SC_FIXED: (5, 1000, 30.0), g.SC_ADAPTIVE: (4, 600, 25.0),
    })  # fmt: skip
    arms = g.pool([first, second])
    assert arms[g.ROUTER].summary.n == 20 and arms[g.ROUTER].summary.correct == 11
    verdicts = "\n".join(g.goals(arms))
    # (a) -5.0 points: missed though the time is 0.79x.
    assert "-5.0 points; 0.79× mean job time" in verdicts
    assert "(a)" in verdicts and verdicts.split("(a)")[1].split("\n")[0].endswith("missed |")
    # (b) fixed +20 points at 4x tokens: missed on tokens; adaptive +15 at 2.4x: met.
    lines = {line.split("`")[1]: line for line in verdicts.splitlines() if "(b)" in line}
    assert "+20.0 points; 4.00× tokens | missed" in lines[g.SC_FIXED]
    assert "+15.0 points; 2.40× tokens | met" in lines[g.SC_ADAPTIVE]
    # (c) 40 % fewer tokens, 5 points lower: missed on accuracy.
    assert "40.0 % fewer tokens; -5.0 points | missed" in verdicts
    assert 'both right 11, only `embedded-router` 0, only `direct role="large"` 1' in verdicts


def test_first_samples_agree_only_when_all_ran_and_printed_one_answer() -> None:
    assert g.unanimous_prefix(["3", "3", "3", "3", "4"], 4)
    assert not g.unanimous_prefix(["3", "3", None, "3"], 4)
    assert not g.unanimous_prefix(["3", "3", "3"], 4)


def test_the_script_prints_the_table(tmp_path: Path) -> None:
    path = _run(tmp_path / "a.json", 0, {g.LARGE: (6, 300, 10.0), g.ROUTER: (6, 100, 5.0)})
    # A run still going: its later arms are listed with no rows yet, and left out.
    data = json.loads(path.read_text())
    data["strategies"] += [{"label": g.SMALL, "spec": SPECS[g.SMALL]}]
    data["strategies"] += [{"label": g.SC_FIXED, "spec": SPECS[g.SC_FIXED]}]
    path.write_text(json.dumps(data))
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "| `embedded-router` | 60.0 (6/10) |" in out
    assert "+0.0 points; 0.50× mean job time (0.50× p50) | met |" in out
    assert g.SMALL not in out and "(b)" not in out


def _trace_db(path: Path, jobs: dict[str, tuple[list[str | None], str]]) -> Path:
    """The two events the report reads, per job: its samples' answers and the vote."""
    db = sqlite3.connect(path)
    db.execute("create table spans (job_id text, seq int, kind text, name text, attributes text)")
    for job_id, (answers, stopped) in jobs.items():
        events: list[tuple[str, dict[str, Any]]] = [
            ("sample", {"index": i, "answer": a}) for i, a in enumerate(answers)
        ]
        votes = Counter(a for a in answers if a is not None)
        events.append(("vote", {"votes": votes, "samples": len(answers), "stopped": stopped}))
        for seq, (name, attributes) in enumerate(events):
            row = (job_id, seq, "event", name, json.dumps(attributes))
            db.execute("insert into spans values (?, ?, ?, ?, ?)", row)
    db.commit()
    db.close()
    return path


def test_the_traces_say_how_many_samples_ran_and_whether_the_right_answer_was_among_them(
    tmp_path: Path,
) -> None:
    # p0: 4 agreeing samples, stopped early, right. p1: 8 samples, one abstained, the
    # right answer "1" drawn once but outvoted by "2".
    path = _run(tmp_path / "a.json", 0, {g.SC_ADAPTIVE: (1, 600, 25.0)})
    data = json.loads(path.read_text())
    data["rows"] = data["rows"][:2]
    path.write_text(json.dumps(data))
    db = _trace_db(tmp_path / "ponder.db", {
        f"{g.SC_ADAPTIVE}-0": (["1", "1", "1", "1"], "confident"),
        f"{g.SC_ADAPTIVE}-1": (["2", "3", "1", None, "2", "2", "4", "5"], "n_reached"),
    })  # fmt: skip
    report = "\n".join(g.sampling_report(g.pool([path]), db))
    assert "samples drawn: 4: 1, 8: 1 (mean 6.00); stopped: confident 1, n_reached 1" in report
    assert "abstained (the program failed or printed no number): 1 of 12 (8.3 %)" in report
    assert "the right answer among the samples: 2 of 2 jobs (100.0 %)" in report
    assert "the vote picked it in 1" in report
    assert "first 4 samples all ran and agreed: 1 of 2 jobs (50.0 %)" in report


def test_the_router_traces_say_where_each_problem_went_and_which_route_lost(
    tmp_path: Path,
) -> None:
    # Large-only right on p0..p5; the router right on p0..p4 (p5 lost on a normal route).
    path = _run(tmp_path / "a.json", 0, {g.LARGE: (6, 300, 10.0), g.ROUTER: (5, 100, 5.0)})
    db = sqlite3.connect(tmp_path / "ponder.db")
    db.execute("create table spans (job_id text, seq int, kind text, name text, attributes text)")
    for i in range(10):
        events = [
            ("difficulty", {"level": "easy" if i < 2 else "normal"}),
            ("execution", {"ok": i != 5}),
        ]
        for seq, (name, attributes) in enumerate(events):
            row = (f"{g.ROUTER}-{i}", seq, "event", name, json.dumps(attributes))
            db.execute("insert into spans values (?, ?, ?, ?, ?)", row)
    db.commit()
    report = "\n".join(g.routing_report(g.pool([path]), tmp_path / "ponder.db"))
    assert "`embedded-router`, 10 jobs from their traces:" in report
    assert "normal 8 (3 right; only large-only right 1, only the router 0)" in report
    assert "easy 2 (2 right; only large-only right 0, only the router 0)" in report
    assert "program runs that failed (a repair round follows): 1; jobs with no answer: 0" in report


def test_the_stopping_rule_replayed_over_fixed_samples_stops_where_the_strategy_would() -> None:
    rule = g.SelfConsistency(n=8, adaptive=True, batch_size=2)  # confidence 0.95
    # 4 of 4 agree: P(share > 1/2) = 0.97, stop after two batches.
    assert g.adaptive_on_fixed_samples(["3", "3", "3", "3", "1", "2", "4", "5"], rule) == (4, "3")
    # 3 to 1 is 0.81: not at 0.95 (5 to 1 at 6 can no longer be overturned), yes at 0.8.
    three_one = ["3", "3", "3", "1", "3", "3", "1", "1"]
    assert g.adaptive_on_fixed_samples(three_one, rule) == (6, "3")
    assert g.adaptive_on_fixed_samples(three_one, rule.model_copy(update={"confidence": 0.8})) == (
        4,
        "3",
    )
    # Abstentions do not vote; a split vote draws all 8.
    assert g.adaptive_on_fixed_samples(["1", None, "2", "1", "2", None, "1", "2"], rule) == (8, "1")


def test_the_what_if_table_pairs_every_threshold_on_the_same_samples(tmp_path: Path) -> None:
    path = _run(tmp_path / "a.json", 0, {g.SC_FIXED: (2, 1000, 30.0)})
    data = json.loads(path.read_text())
    data["rows"] = data["rows"][:2]  # p0 and p1 expect "1"
    path.write_text(json.dumps(data))
    db = _trace_db(tmp_path / "ponder.db", {
        f"{g.SC_FIXED}-0": (["1", "1", "1", "1", "2", "2", "2", "2"], "n_reached"),
        f"{g.SC_FIXED}-1": (["2", "2", "2", "1", "1", "1", "1", "1"], "n_reached"),
    })  # fmt: skip
    table = "\n".join(g.stopping_what_if(g.pool([path]), db, confidences=(0.95, 0.8)))
    # p0 stops at 4 either way (right); p1 goes on at 0.95 and is outvoted by the later
    # "1"s (right), but stops at 4 on 3 to 1 at 0.8 (wrong).
    assert "| 0.95 | 6.00 | 25.0 % | 100.0 |" in table
    assert "| 0.80 | 4.00 | 50.0 % | 50.0 |" in table
    # All 8: p0 ties 4 to 4 and the first seen wins; p1's "1" wins 5 to 3.
    assert "| fixed (all 8) | 8.00 | 0.0 % | 100.0 |" in table


def test_goals_compare_arms_on_the_problems_both_answered(tmp_path: Path) -> None:
    # Small direct ran both halves (3 + 0 of 10 right); fixed voting only the first (5 of 10).
    first = _run(tmp_path / "a.json", 0, {g.SMALL: (3, 250, 5.0), g.SC_FIXED: (5, 1000, 30.0)})
    second = _run(tmp_path / "b.json", 10, {g.SMALL: (0, 250, 5.0)})
    verdicts = "\n".join(g.goals(g.pool([first, second])))
    # +20 points on the 10 shared problems, not 50 % against 15 % over unequal sets.
    assert "10 problems: +20.0 points; 4.00× tokens | missed" in verdicts
    assert "both right 3, only `self_consistency" in verdicts
    assert 'only `direct role="small"` 0' in verdicts
