"""`ponder calibrate`: thresholds fitted by replaying journals, with zero model calls.

glimp_router data (four sums, chains of two steps, ``answer_role: null``): step 0 "We add
A and B." is the same from both models, its first token 0.1 nats. At step 1 the small
model's first token has entropy 0.8 or 1.3 on the two problems where it then writes the
right answer, 1.9 or 2.5 on the two where it writes a wrong one; the large model is
always right. Candidates are the midpoints between the observed entropies (0.05, 0.45,
1.05, 1.6, 2.2, 3.0); every tau below 1.9 is fully accurate, and 1.6 sends the fewest
steps to the large model: the data implies tau = 1.6, not the default 1.0.

difficulty_router data: the entropy probe reads 0.3 / 0.7 (small right) and 1.2 / 2.0
(small wrong); easy and normal run direct on small, hard direct on large (a longer,
always right reply). Every problem right at the least tokens: easy_max = hard_min = 0.95.

spec_reason data (the same four sums, chains of three steps): step 0 "We add A and B."
and the last step "The answer is N." are the same from both models and the judge scores
them 8. Step 1 is "A + B = N." from the large model, and from the small model on the
first two sums (judged 6); on the last two the small model writes "A + B = N+1." (judged
3) and concludes from it. Candidates: 1.5, 4.5, 7.0 (the default) and 8.5; every
threshold above 3 is fully accurate, and 4.5 gives the large model the fewest tokens.

cascade data (the same four sums, four small samples each): the small model's leader is
right with shares 1, 3/4 and 3/4 on the first three sums and wrong with 1/2 on the last;
the large model is always right. One run at min_agreement 1 (everything short of
unanimity escalates) covers every lower threshold. Candidates: 0.25, 0.625, 0.875, 1;
0.625 escalates only the last sum, fully accurate at the fewest large tokens.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.cli import main
from core import presets
from core.calibration.fit import (
    CallTime,
    Objective,
    SpecCandidate,
    calibrate_cascade,
    calibrate_difficulty,
    calibrate_glimp,
    calibrate_spec_reason,
    critical_path_ms,
    job_critical_path_ms,
)
from core.calibration.replay import ProblemJobs, load_sources
from core.errors import InvalidInput
from core.runtime import Runtime
from core.settings import Settings
from core.simulator.config import Rule, SimulatorConfig
from core.simulator.server import Simulator
from core.specs import validate_spec
from evals.arms import parse_arms
from evals.backends import LocalBackend
from evals.dataset import load_dataset
from evals.difficulty import ProbeSettings
from evals.runs import Options, evaluate
from strategies.collaboration import compute_optimal
from tests.evals import test_difficulty as binned
from tests.evals.conftest import write_lines
from tests.fixtures.runtime import simulator_settings
from tests.strategies.helpers import SolvedJob, solve

ROOT = Path(__file__).resolve().parents[2]

# (a, b, small's step-1 entropy, small right?)
SUMS = [(2, 3, 0.8, True), (4, 4, 1.3, True), (6, 1, 1.9, False), (7, 2, 2.5, False)]
PROBLEMS = [
    {"id": f"s{i}", "question": f"What is {a} + {b}?", "answer": str(a + b)}
    for i, (a, b, _, _) in enumerate(SUMS)
]
ALL_LARGE = {"kind": "glimp_router", "tau": 0.05, "answer_role": None}
ALL_SMALL = {"kind": "glimp_router", "tau": 10.0, "answer_role": None}


def glimp_script() -> SimulatorConfig:
    rules = []
    for a, b, entropy, right in SUMS:
        q = re.escape(f"What is {a} + {b}?")
        large = f"We add {a} and {b}.\n\nThe answer is {a + b}."
        small = f"We add {a} and {b}.\n\nThe answer is {a + b if right else a + b + 1}."
        step1 = q + ".*" + re.escape(f"and {b}.\n\n")
        rules += [
            Rule(model="sim-large", match=q, replies=[large]),
            Rule(model="sim-small", match=step1, replies=[small], first_token_entropy=entropy),
            Rule(model="sim-small", match=q, replies=[small], first_token_entropy=0.1),
        ]
    return SimulatorConfig(models=["sim-small", "sim-large"], rules=rules)


PROBE_VALUES = [0.3, 0.7, 1.2, 2.0]
ROUTER = {
    "kind": "difficulty_router",
    "easy": {"kind": "direct"},
    "normal": {"kind": "direct"},
    "hard": {"kind": "direct", "role": "large"},
}


def difficulty_script() -> SimulatorConfig:
    rules = []
    for (a, b, _, right), value in zip(SUMS, PROBE_VALUES, strict=True):
        q = re.escape(f"What is {a} + {b}?")
        s = a + b
        rules += [
            Rule(
                model="sim-small",
                match=q + ".*assistant: The answer is $",
                replies=[f"The answer is {s}."],
                first_token_entropy=value,
            ),
            Rule(model="sim-small", match=q, replies=[f"The answer is {s if right else s + 1}."]),
            Rule(
                model="sim-large", match=q, replies=[f"Adding {a} and {b} gives {s}. Answer: {s}."]
            ),
        ]
    return SimulatorConfig(models=["sim-small", "sim-large"], rules=rules)


ACCEPT_ALL = {"kind": "spec_reason", "threshold": 0}
REJECT_ALL = {"kind": "spec_reason", "threshold": 9}  # the judge never says 9 here
JUDGE = r"\nuser: Score the last step\."


def spec_script() -> SimulatorConfig:
    rules = []
    for a, b, _, right in SUMS:
        q = re.escape(f"What is {a} + {b}?") + ".*"
        s, wrong = a + b, a + b + 1
        large = f"We add {a} and {b}.\n\n{a} + {b} = {s}.\n\nThe answer is {s}."
        small = (
            large
            if right
            else large.replace(f"= {s}.", f"= {wrong}.").replace(f"is {s}.", f"is {wrong}.")
        )
        rules += [
            # Judgements: the draft ends the assistant message before the question.
            Rule(model="sim-large", match=q + re.escape(f"= {s}.") + JUDGE, replies=["6"]),
            Rule(model="sim-large", match=q + re.escape(f"= {wrong}.") + JUDGE, replies=["3"]),
            Rule(model="sim-large", match=q + JUDGE, replies=["8"]),
            Rule(model="sim-large", match=q, replies=[large]),
            # On the large model's step 1 the small model continues rightly.
            Rule(model="sim-small", match=q + re.escape(f"= {s}.\n\n"), replies=[large]),
            Rule(model="sim-small", match=q, replies=[small]),
        ]
    return SimulatorConfig(models=["sim-small", "sim-large"], rules=rules)


@pytest.fixture
async def rt(
    simulator: Simulator, sqlite_database_url: str, tmp_path: Path
) -> AsyncIterator[Runtime]:
    settings = simulator_settings(simulator.url, sqlite_database_url, tmp_path)
    async with Runtime(settings, roles={"small", "large"}) as runtime:
        yield runtime


async def run_set(rt: Runtime, *specs: dict[str, Any]) -> list[ProblemJobs]:
    """Every problem under every spec, problem i with seed i (as `ponder eval` does)."""
    problems = []
    for i, p in enumerate(PROBLEMS):
        ids = []
        for spec in specs:
            job = await solve(rt, spec, question=p["question"], seed=i)
            assert job.outcome.status == "succeeded", job.outcome.error
            ids.append(job.job_id)
        problems.append(ProblemJobs(p["id"], p["answer"], tuple(ids)))
    return problems


async def test_glimp_tau_is_fitted_from_the_journals_without_model_calls(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(glimp_script())
    problems = await run_set(rt, ALL_LARGE, ALL_SMALL)
    before = simulator.stats.requests

    sources, skipped = await load_sources(rt, problems, kind="glimp_router", source_field="results")
    fit = await calibrate_glimp(
        rt, sources, ALL_LARGE, Objective(), tenant="default", source_field="results"
    )

    assert simulator.stats.requests == before  # zero model calls
    assert fit.live_calls == 0 and skipped == []
    by_tau = {c.values["tau"]: c for c in fit.candidates}
    assert sorted(by_tau) == [0.05, 0.45, 1.05, 1.6, 2.2, 3.0]
    assert all(c.complete for c in fit.candidates)  # every replay strict, every call journaled
    assert [by_tau[t].accuracy for t in sorted(by_tau)] == [1.0, 1.0, 1.0, 1.0, 0.75, 0.5]
    # "The answer is N." = 5 tokens from large at step 1; step 0 = 6 more when large.
    assert [by_tau[t].mean_large_tokens for t in sorted(by_tau)] == [11, 5, 3.75, 2.5, 1.25, 0]
    assert fit.chosen.values == {"tau": 1.6} and fit.defaults == {"tau": 0.05}
    assert fit.spec["tau"] == 1.6 and fit.spec["answer_role"] is None

    # Another objective, from the same data: at most 10% of steps on the large model.
    share = await calibrate_glimp(
        rt,
        sources,
        ALL_LARGE,
        Objective(target_large_share=0.1),
        tenant="default",
        source_field="results",
    )
    assert share.chosen.values == {"tau": 3.0} and share.chosen.accuracy == 0.5
    # Two points of tolerance buy nothing here (the next cheaper tau loses 25 points).
    loose = await calibrate_glimp(
        rt, sources, ALL_LARGE, Objective(tolerance=0.02), tenant="default", source_field="r"
    )
    assert loose.chosen.values == {"tau": 1.6}
    assert simulator.stats.requests == before


async def test_a_thin_journal_is_reported_and_live_mode_counts_its_calls(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(glimp_script())
    default_tau = {"kind": "glimp_router", "answer_role": None}  # tau 1.0 only
    problems = await run_set(rt, default_tau)
    sources, _ = await load_sources(rt, problems, kind="glimp_router", source_field="results")
    before = simulator.stats.requests

    strict = await calibrate_glimp(
        rt, sources, default_tau, Objective(), tenant="default", source_field="results"
    )
    assert simulator.stats.requests == before
    coverage = {c.values["tau"]: (c.covered, c.problems) for c in strict.candidates}
    # Only taus that route like 1.0 are answerable from its journal; 1.6 would need the
    # small model's step 1 on the 1.3-nats problem, which nobody recorded.
    assert coverage[1.05] == (4, 4) and coverage[1.6] == (3, 4) and coverage[0.45] == (3, 4)
    assert strict.chosen.values == {"tau": 1.05}

    live = await calibrate_glimp(
        rt, sources, default_tau, Objective(live=True), tenant="default", source_field="results"
    )
    assert live.chosen.values == {"tau": 1.6}
    assert live.live_calls > 0
    assert simulator.stats.requests - before == live.live_calls  # only the misses


async def test_the_fitted_preset_runs_by_name(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(glimp_script())
    problems = await run_set(rt, ALL_LARGE, ALL_SMALL)
    sources, _ = await load_sources(rt, problems, kind="glimp_router", source_field="results")
    fit = await calibrate_glimp(
        rt, sources, ALL_LARGE, Objective(), tenant="default", source_field="results"
    )
    await presets.save_preset(rt.sessions, tenant="default", name="glimp-fit", spec=fit.spec)
    async with rt.sessions() as session:
        stored = await presets.get_preset(session, "default", "glimp-fit")
    assert stored is not None and stored.spec["tau"] == 1.6

    job = await solve(rt, {"preset": "glimp-fit"}, question=PROBLEMS[1]["question"], seed=1)
    assert job.outcome.status == "succeeded"
    # 1.3 nats <= 1.6: the small model writes step 1 (and is right).
    assert [a["to"] for a in job.events_named("route")] == ["small", "small"]
    assert job.events_named("route")[1]["tau"] == 1.6
    assert job.answer == "8"


async def test_difficulty_thresholds_are_fitted_without_model_calls(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(difficulty_script())
    problems = await run_set(rt, ROUTER, {"kind": "direct", "role": "large"})
    before = simulator.stats.requests
    sources, _ = await load_sources(rt, problems, kind="difficulty_router", source_field="results")
    fit = await calibrate_difficulty(
        rt, sources, ROUTER, Objective(), tenant="default", source_field="results"
    )
    assert simulator.stats.requests == before
    assert fit.defaults == {"easy_max": 0.5, "hard_min": 1.5}
    assert fit.chosen.values == {"easy_max": 0.95, "hard_min": 0.95}
    assert fit.chosen.accuracy == 1.0 and fit.live_calls == 0
    # Nobody ran the small model on the 2.0-nats problem (the router sent it to large):
    # pairs that would call it easy or normal cannot be scored, and are not chosen.
    uncovered = [c for c in fit.candidates if not c.complete]
    assert uncovered and all(c.values["hard_min"] > 2.0 for c in uncovered)
    assert fit.spec["easy_max"] == 0.95 and fit.spec["hard"]["role"] == "large"
    # The defaults would have been worse: 1.2 is "normal" (small, wrong) under them.
    defaults = next(c for c in fit.candidates if c.values == {"easy_max": 0.5, "hard_min": 1.6})
    assert defaults.accuracy == 0.75
    # Sending everything to the large model is as accurate, but the fit counts the large
    # model's tokens (roles other than the probe's) first.
    all_large = next(c for c in fit.candidates if c.values == {"easy_max": 0.15, "hard_min": 0.15})
    assert all_large.accuracy == 1.0
    assert 0 < (fit.chosen.mean_large_tokens or 0) < (all_large.mean_large_tokens or 0)

    with pytest.raises(InvalidInput) as caught:
        await calibrate_difficulty(
            rt,
            sources,
            ROUTER,
            Objective(target_large_share=0.3),
            tenant="default",
            source_field="results",
        )
    assert caught.value.field == "target_large_share"


async def test_spec_reason_threshold_is_fitted_from_the_journals_without_model_calls(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(spec_script())
    problems = await run_set(rt, ACCEPT_ALL, REJECT_ALL)
    before = simulator.stats.requests

    sources, skipped = await load_sources(rt, problems, kind="spec_reason", source_field="results")
    default = {"kind": "spec_reason"}  # threshold 7
    fit = await calibrate_spec_reason(
        rt, sources, default, Objective(), tenant="default", source_field="results"
    )

    assert simulator.stats.requests == before  # zero model calls
    assert fit.live_calls == 0 and skipped == []
    by_t = {c.values["threshold"]: c for c in fit.candidates if isinstance(c, SpecCandidate)}
    assert sorted(by_t) == [1.5, 4.5, 7.0, 8.5]  # between the judge's 3, 6 and 8
    assert all(c.complete for c in fit.candidates)  # mixed routes too: pooled journals
    assert [by_t[t].accuracy for t in sorted(by_t)] == [0.5, 1.0, 1.0, 1.0]
    # Large tokens: a judgement is 1 token, "A + B = N." 6, "We add A and B." 6,
    # "The answer is N." 5. All accepted: 3; step 1 rejected: 3 + 6; nothing: 3 + 17.
    assert [by_t[t].mean_large_tokens for t in sorted(by_t)] == [3, 6, 9, 20]
    rows = {t: (c.large_steps, c.steps, c.accepted, c.rejected) for t, c in by_t.items()}
    assert rows == {1.5: (0, 12, 12, 0), 4.5: (2, 12, 10, 2), 7.0: (4, 12, 8, 4),
                    8.5: (12, 12, 0, 12)}  # fmt: skip
    chosen = fit.chosen
    assert isinstance(chosen, SpecCandidate)
    assert chosen.values == {"threshold": 4.5} and fit.defaults == {"threshold": 7.0}
    assert chosen.acceptance == 10 / 12 and chosen.large_share == 2 / 12
    assert all((c.mean_latency_ms or 0) > 0 for c in by_t.values())  # recorded latencies
    # The replays' spans show each judgement with the draft that ran during it.
    for job_id in by_t[1.5].job_ids:
        serial = await job_critical_path_ms(rt, job_id, "large", pipeline=False)
        assert await job_critical_path_ms(rt, job_id, "large", pipeline=True) < serial
    assert fit.spec["threshold"] == 4.5 and fit.spec["pipeline"] is True
    report = fit.to_json()
    # Tokens: 17 small + 3 judgements on the first two sums; on the last two also the
    # large step 1 (6) and the discarded speculative draft of step 2 (5): 25.5 a sum.
    assert report["candidates"][1] == {
        "threshold": 4.5, "coverage": "4/4", "accuracy": 1.0, "mean_tokens": 25.5,
        "mean_large_tokens": 6.0, "large_share": 2 / 12, "live_calls": 0, "accepted": 10,
        "rejected": 2, "acceptance": 10 / 12, "mean_latency_ms": chosen.mean_latency_ms,
    }  # fmt: skip

    # Other objectives from the same data: 50 points of tolerance buy the all-small
    # chain; at most 20 % of steps on the large model still allows 4.5.
    loose = await calibrate_spec_reason(
        rt, sources, default, Objective(tolerance=0.5), tenant="default", source_field="r"
    )
    assert loose.chosen.values == {"threshold": 1.5}
    share = await calibrate_spec_reason(
        rt, sources, default, Objective(target_large_share=0.2), tenant="d", source_field="r"
    )
    assert share.chosen.values == {"threshold": 4.5}
    assert simulator.stats.requests == before


async def test_spec_reason_thin_journal_is_reported_and_live_mode_counts_its_calls(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(spec_script())
    default = {"kind": "spec_reason"}  # threshold 7 only
    problems = await run_set(rt, default)
    sources, _ = await load_sources(rt, problems, kind="spec_reason", source_field="results")
    before = simulator.stats.requests

    strict = await calibrate_spec_reason(
        rt, sources, default, Objective(), tenant="default", source_field="results"
    )
    assert simulator.stats.requests == before
    coverage = {c.values["threshold"]: (c.covered, c.problems) for c in strict.candidates}
    # 1.5 accepts the wrong step 1 of the last two sums: nobody judged the conclusion
    # drawn from it. 8.5 rejects step 0: nobody asked the large model to write it.
    assert coverage == {1.5: (2, 4), 4.5: (4, 4), 7.0: (4, 4), 8.5: (0, 4)}
    by_t = {c.values["threshold"]: c for c in strict.candidates}
    assert by_t[8.5].accuracy is None and by_t[8.5].to_json()["mean_latency_ms"] is None
    assert strict.chosen.values == {"threshold": 4.5} and strict.live_calls == 0

    live = await calibrate_spec_reason(
        rt, sources, default, Objective(live=True), tenant="default", source_field="results"
    )
    assert all(c.complete for c in live.candidates)
    # 1.5: one judgement on each of two sums; 8.5, per sum: the large model's step 0 and
    # last step, and the small model's second identical draft of step 1.
    assert {c.values["threshold"]: c.live_calls for c in live.candidates} == {
        1.5: 2,
        4.5: 0,
        7.0: 0,
        8.5: 12,
    }
    assert simulator.stats.requests - before == live.live_calls == 14
    assert live.chosen.values == {"threshold": 4.5}


async def test_spec_reason_needs_judgements_and_a_spec_reason_base(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(glimp_script())
    problems = await run_set(rt, ALL_SMALL)
    sources, _ = await load_sources(rt, problems, kind="spec_reason", source_field="results")
    before = simulator.stats.requests
    with pytest.raises(InvalidInput) as caught:
        await calibrate_spec_reason(
            rt, sources, {"kind": "spec_reason"}, Objective(), tenant="default",
            source_field="results",
        )  # fmt: skip
    assert caught.value.field == "results"
    assert "no spec_reason judgement events" in caught.value.message
    with pytest.raises(InvalidInput) as caught:
        await calibrate_spec_reason(
            rt, sources, ALL_SMALL, Objective(), tenant="default", source_field="results"
        )
    assert caught.value.field == "strategy.kind"
    assert simulator.stats.requests == before


def test_critical_path_overlaps_the_judgement_with_the_speculative_draft() -> None:
    calls = [
        CallTime("s0", "small", False, 10.0),  # draft of step 0
        CallTime("s0", "large", True, 4.0),  # its judgement ...
        CallTime("s0", "small", False, 9.0),  # ... while step 1 is drafted: 9
        CallTime("s1", "large", True, 12.0),  # judgement of step 1 ...
        CallTime("s1", "small", False, 5.0),  # ... with the (discarded) draft of step 2: 12
        CallTime("s1", "large", False, 20.0),  # the large model writes step 1
        CallTime("s2", "small", False, 7.0),  # draft of step 2, the last
        CallTime("s2", "large", True, 3.0),  # judged alone
    ]
    assert critical_path_ms(calls, "large", pipeline=True) == 10 + 9 + 12 + 20 + 7 + 3
    assert critical_path_ms(calls, "large", pipeline=False) == 70


# --- the command, as a user runs it ------------------------------------------------


def cli_env(tmp_path: Path, sim_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PONDER_")}
    env["PONDER_DATA_DIR"] = str(tmp_path / "data")
    for role, model in (("SMALL", "sim-small"), ("LARGE", "sim-large")):
        env[f"PONDER_POOLS__{role}__ENDPOINTS"] = json.dumps([sim_url])
        env[f"PONDER_POOLS__{role}__MODEL"] = model
        env[f"PONDER_POOLS__{role}__KIND"] = "simulator"
    return env


def ponder(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def write_dataset(path: Path) -> Path:
    path.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS), encoding="utf-8")
    return path


async def test_eval_then_calibrate_end_to_end(simulator: Simulator, tmp_path: Path) -> None:
    simulator.set_config(glimp_script())
    env = cli_env(tmp_path, simulator.url)
    data = write_dataset(tmp_path / "sums.jsonl")
    out = tmp_path / "out"
    arms = ["--strategy", json.dumps(ALL_LARGE), "--strategy", json.dumps(ALL_SMALL)]
    ran = ponder(env, "eval", "--dataset", str(data), *arms, "--out", str(out), "--name", "sums")
    assert ran.returncode == 0, ran.stderr
    before = simulator.stats.requests

    cal = ponder(env, "calibrate", "glimp_router", "--results", str(out / "results.json"),
                 "--preset", "sums-glimp", "--json")  # fmt: skip
    assert cal.returncode == 0, cal.stderr
    assert simulator.stats.requests == before  # a fully journaled set: zero model calls
    report = json.loads(cal.stdout)
    assert report["fitted"] == {"tau": 1.6} and report["defaults"] == {"tau": 0.05}
    assert report["live_calls"] == 0 and report["preset"] == "sums-glimp"

    # The dataset form finds the same jobs by question; the newest glimp job (tau 10)
    # gives the base spec.
    by_question = ponder(env, "calibrate", "glimp_router", "--dataset", str(data))
    assert by_question.returncode == 0, by_question.stderr
    assert "fitted tau=1.6 (was tau=10) on 4 problems; model calls: 0 live" in by_question.stdout
    assert simulator.stats.requests == before

    # The preset, by name, on the same database.
    url = f"sqlite:///{(tmp_path / 'data' / 'ponder.db').resolve()}"
    settings = simulator_settings(simulator.url, url, tmp_path / "data")
    async with Runtime(settings, roles={"small", "large"}) as rt:
        job = await solve(rt, {"preset": "sums-glimp"}, question=PROBLEMS[0]["question"])
    assert job.answer == "5"
    assert job.events_named("route")[0]["tau"] == 1.6


def run_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, *args: str
) -> tuple[int, str, str]:
    for name in list(os.environ):
        if name.startswith("PONDER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PONDER_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(SystemExit) as exited:
        main(["calibrate", *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return int(exited.value.code or 0), out, err


def test_difficulty_calibration_from_a_dataset_by_command(
    simulator: Simulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    simulator.set_config(difficulty_script())
    data_dir = tmp_path / "data"
    url = f"sqlite:///{(data_dir / 'ponder.db').resolve()}"

    async def run_jobs() -> None:
        settings = simulator_settings(simulator.url, url, data_dir)
        async with Runtime(settings, roles={"small", "large"}) as rt:
            await run_set(rt, ROUTER, {"kind": "direct", "role": "large"})

    asyncio.run(run_jobs())
    before = simulator.stats.requests
    sums = str(write_dataset(tmp_path / "sums.jsonl"))
    code, out, err = run_cli(monkeypatch, capsys, tmp_path, "difficulty_router", "--dataset",
                             sums, "--preset", "sums-router", "--json")  # fmt: skip
    assert code == 0, err
    assert simulator.stats.requests == before
    report = json.loads(out)
    assert report["fitted"] == {"easy_max": 0.95, "hard_min": 0.95}
    assert report["accuracy"] == 1.0 and report["live_calls"] == 0
    stored = asyncio.run(stored_preset(data_dir, "sums-router"))
    assert (stored["easy_max"], stored["hard_min"], stored["hard"]["role"]) == (0.95, 0.95, "large")


def synthetic_results(path: Path) -> Path:
    """A results.json as `ponder eval` writes it, rows tagged with a difficulty bin:
    small is as good as large on easy problems and much worse on hard ones."""
    arms = {
        "small": {"kind": "direct", "role": "small"},
        "large": {"kind": "direct", "role": "large"},
    }
    outcomes = {  # (label, bin): [(correct, tokens), ...]
        ("small", "easy"): [(True, 10), (True, 10)],
        ("small", "hard"): [(False, 20), (True, 20)],
        ("large", "easy"): [(True, 30), (True, 30)],
        ("large", "hard"): [(True, 60), (True, 60)],
    }
    rows = [
        {"problem_id": f"{label}-{level}-{i}", "problem_index": i, "strategy": label,
         "job_id": None, "expected": "1", "correct": ok, "completion_tokens": tokens,
         "difficulty": level}
        for (label, level), results in outcomes.items()
        for i, (ok, tokens) in enumerate(results)
    ]  # fmt: skip
    data = {
        "format": "ponder-eval/1",
        "name": "synthetic",
        "strategies": [
            {"label": k, "spec": v, "params": v, "roles": [v["role"]]} for k, v in arms.items()
        ],
        "rows": rows,
    }
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_compute_optimal_from_an_eval_table(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    results = str(synthetic_results(tmp_path / "results.json"))
    code, out, err = run_cli(monkeypatch, capsys, tmp_path, "compute_optimal", "--results",
                             results, "--budget-tokens", "100", "--difficulty", "hard",
                             "--preset", "co-table", "--json")  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    assert (report["chosen"]["label"], report["chosen"]["bin"]) == ("large", "hard")
    bins = {(a["label"], a["bin"]): (a["accuracy"], a["mean_tokens"]) for a in report["table"]}
    assert bins[("small", None)] == (0.75, 15.0) and bins[("large", "hard")] == (1.0, 60.0)

    # Easy problems: a tie on accuracy goes to the cheaper arm; overall within 20 tokens:
    # only small fits.
    code, out, _ = run_cli(monkeypatch, capsys, tmp_path, "compute_optimal", "--results",
                           results, "--budget-tokens", "100", "--difficulty", "easy")  # fmt: skip
    assert code == 0 and "best for easy problems within 100 tokens: small" in out
    code, out, _ = run_cli(monkeypatch, capsys, tmp_path, "compute_optimal", "--results",
                           results, "--budget-tokens", "20")  # fmt: skip
    assert code == 0 and "best for a problem within 20 tokens: small" in out

    code, _, err = run_cli(monkeypatch, capsys, tmp_path, "compute_optimal", "--results",
                           results, "--budget-tokens", "12", "--difficulty", "hard")  # fmt: skip
    assert code == 2
    assert err.strip() == (
        "ponder: budget_tokens: no arm fits a budget of 12 tokens; the cheapest is "
        "'small' at 20.0 mean tokens"
    )

    # The preset validates as a compute_optimal spec and carries the table.
    stored = asyncio.run(stored_preset(tmp_path / "data", "co-table"))
    params = validate_spec(stored)
    assert isinstance(params, compute_optimal.Params)
    assert params.budget_tokens == 100 and len(params.arms) == 6


async def stored_preset(data_dir: Path, name: str) -> dict[str, Any]:
    url = f"sqlite:///{(data_dir / 'ponder.db').resolve()}"
    settings = Settings(database_url=url, data_dir=data_dir, _env_file=None)  # type: ignore[call-arg]
    async with Runtime(settings) as rt, rt.sessions() as session:
        preset = await presets.get_preset(session, "default", name)
    assert preset is not None
    return dict(preset.spec)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bogus", "--results", "r.json"], "ponder: kind: cannot calibrate 'bogus'"),
        (["glimp_router"], "ponder: results: glimp_router needs --results or --dataset"),
        (["glimp_router", "--dataset", "missing.jsonl"], "ponder: dataset: cannot read"),
        (["glimp_router", "--results", "missing.json"], "ponder: results: cannot read"),
        (["glimp_router", "--dataset", "{sums}", "--strategy", "glimp_router"],
         "ponder: dataset: none of its 4 problems has a journaled job"),
        (["glimp_router", "--dataset", "{sums}", "--target-large-share", "2"],
         "ponder: target_large_share: a fraction between 0 and 1"),
        (["compute_optimal", "--results", "r.json"], "ponder: budget_tokens: give"),
        (["glimp_router", "--dataset", "{sums}", "--preset", "Bad Name"], "ponder: a preset name"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_with_one_message(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    args: list[str],
    message: str,
) -> None:
    sums = str(write_dataset(tmp_path / "sums.jsonl"))
    code, _, err = run_cli(monkeypatch, capsys, tmp_path, *[a.format(sums=sums) for a in args])
    assert code == 2
    assert err.startswith(message), err
    assert len(err.strip().splitlines()) == 1


def test_spec_reason_calibration_by_command_prints_the_table_and_writes_the_preset(
    simulator: Simulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    simulator.set_config(spec_script())
    data_dir = tmp_path / "data"
    url = f"sqlite:///{(data_dir / 'ponder.db').resolve()}"
    settings = simulator_settings(simulator.url, url, data_dir)

    async def run_jobs() -> None:
        async with Runtime(settings, roles={"small", "large"}) as rt:
            await run_set(rt, ACCEPT_ALL, REJECT_ALL)

    asyncio.run(run_jobs())
    before = simulator.stats.requests
    sums = str(write_dataset(tmp_path / "sums.jsonl"))
    code, out, err = run_cli(monkeypatch, capsys, tmp_path, "spec_reason", "--dataset", sums,
                             "--strategy", "spec_reason", "--preset", "sums-spec",
                             "--json")  # fmt: skip
    assert code == 0, err
    assert simulator.stats.requests == before
    report = json.loads(out)
    assert report["fitted"] == {"threshold": 4.5} and report["defaults"] == {"threshold": 7.0}
    assert report["accuracy"] == 1.0 and report["live_calls"] == 0
    assert report["preset"] == "sums-spec"
    assert [(c["threshold"], c["coverage"], c["acceptance"]) for c in report["candidates"]] == [
        (1.5, "4/4", 1.0), (4.5, "4/4", 10 / 12), (7.0, "4/4", 8 / 12), (8.5, "4/4", 0.0)
    ]  # fmt: skip
    stored = asyncio.run(stored_preset(data_dir, "sums-spec"))
    assert stored["kind"] == "spec_reason" and stored["threshold"] == 4.5

    # The table; the base spec is the newest spec_reason job's (threshold 9).
    code, out, err = run_cli(monkeypatch, capsys, tmp_path, "spec_reason", "--dataset", sums)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["threshold", "coverage", "accuracy", "mean", "tokens",
                                "large", "tokens", "large", "share", "accepted", "latency",
                                "ms"]  # fmt: skip
    chosen = next(line for line in lines if line.endswith(" *"))
    assert chosen.split()[:7] == ["4.5", "4/4", "100.0%", "25.5", "6.0", "16.7%", "83.3%"]
    assert lines[-1] == "fitted threshold=4.5 (was threshold=9) on 4 problems; model calls: 0 live"
    assert simulator.stats.requests == before

    # The preset by name: the wrong step 1 of 6 + 1 (judged 3) is rewritten by large.
    async def run_preset() -> SolvedJob:
        async with Runtime(settings, roles={"small", "large"}) as rt:
            return await solve(rt, {"preset": "sums-spec"}, question=PROBLEMS[2]["question"])

    job = asyncio.run(run_preset())
    assert job.answer == "7"
    assert [(a["score"], a["threshold"]) for a in job.events_named("judgement")] == [
        (8.0, 4.5), (3.0, 4.5), (8.0, 4.5)
    ]  # fmt: skip


def test_compute_optimal_chooses_per_bin_from_an_eval_with_a_difficulty_probe(
    simulator: Simulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """`ponder eval` probes each problem (tests/evals/test_difficulty.py's script: e1-e3
    easy, h1-h3 hard); the table per bin picks the cheap arm on easy problems and the
    expensive one on hard ones, and the preset, served, probes and chooses alike."""
    simulator.set_config(binned.difficulty_script())
    data_dir = tmp_path / "data"
    settings = simulator_settings(
        simulator.url, f"sqlite:///{(data_dir / 'ponder.db').resolve()}", data_dir
    )
    out = tmp_path / "out"
    dataset = load_dataset(write_lines(tmp_path / "six.jsonl", binned.PROBLEMS))

    async def run_eval() -> None:
        async with Runtime(settings, roles={"small", "large"}) as rt:
            arms = parse_arms([binned.CHEAP, binned.EXPENSIVE])
            options = Options(out=out, name="six", difficulty=ProbeSettings())
            await evaluate(LocalBackend(rt), dataset, arms, options)

    asyncio.run(run_eval())
    before = simulator.stats.requests
    results = str(out / "results.json")

    def calibrate(*args: str) -> tuple[int, str, str]:
        return run_cli(monkeypatch, capsys, tmp_path, "compute_optimal", "--results", results,
                       *args)  # fmt: skip

    code, stdout, err = calibrate("--budget-tokens", "100", "--preset", "co-bins", "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["choices"] == {
        "all": binned.EXPENSIVE_LABEL, "easy": binned.CHEAP_LABEL, "hard": binned.EXPENSIVE_LABEL,
    }  # fmt: skip
    assert report["chosen"]["label"] == binned.EXPENSIVE_LABEL  # overall, as before
    bins = {(a["label"], a["bin"]): (a["n"], a["accuracy"]) for a in report["table"]}
    assert bins[(binned.CHEAP_LABEL, "easy")] == (3, 1.0)
    assert bins[(binned.EXPENSIVE_LABEL, "easy")] == (3, pytest.approx(2 / 3))
    assert bins[(binned.CHEAP_LABEL, "hard")] == (3, 0.0)
    spec = report["spec"]
    assert (spec["probe"], spec["probe_samples"], spec["easy_max"], spec["hard_min"]) == (
        "agreement", 4, 0.0, 0.5,
    )  # fmt: skip
    assert simulator.stats.requests == before  # calibration reads the table only

    # Within 10 tokens the expensive arm (14) fits nowhere; --difficulty keeps working.
    code, stdout, _ = calibrate("--budget-tokens", "10")
    assert code == 0
    assert f"best for easy problems within 10 tokens: {binned.CHEAP_LABEL}" in stdout
    assert f"best for hard problems within 10 tokens: {binned.CHEAP_LABEL}" in stdout
    code, stdout, _ = calibrate("--budget-tokens", "100", "--difficulty", "easy", "--json")
    assert code == 0
    assert json.loads(stdout)["chosen"]["label"] == binned.CHEAP_LABEL
    assert json.loads(stdout)["spec"]["difficulty"] == "easy"

    # Served by name: the preset probes each problem as the eval did, then runs its choice.
    stored = asyncio.run(stored_preset(data_dir, "co-bins"))
    assert {k: v for k, v in stored.items() if k in spec} == spec  # stored concrete

    async def serve(question: str) -> SolvedJob:
        async with Runtime(settings, roles={"small", "large"}) as rt:
            return await solve(rt, {"preset": "co-bins"}, question=question)

    easy = asyncio.run(serve(binned.EASY["e3"][0]))
    hard = asyncio.run(serve(binned.HARD["h1"][0]))
    assert easy.events_named("difficulty")[0]["level"] == "easy"
    assert easy.events_named("choice")[0]["label"] == binned.CHEAP_LABEL
    assert easy.answer == "6"  # the expensive arm would have said 7
    assert hard.events_named("difficulty")[0]["level"] == "hard"
    assert hard.events_named("choice")[0]["label"] == binned.EXPENSIVE_LABEL
    assert hard.answer == "7"


# Per sum: the small model's four samples (its answers' offsets from the right sum).
CASCADE_SAMPLES = [(0, 0, 0, 0), (0, 0, 0, 1), (0, 2, 0, 0), (1, 2, 1, 0)]
CASCADE_STRICT = {"kind": "cascade", "samples": 4, "min_agreement": 1.0, "max_tokens": 64}


def cascade_script() -> SimulatorConfig:
    rules = []
    for (a, b, _, _), offsets in zip(SUMS, CASCADE_SAMPLES, strict=True):
        q = re.escape(f"What is {a} + {b}?")
        small = [f"The answer is {a + b + o}." for o in offsets]
        rules += [
            Rule(model="sim-small", match=q, replies=small),
            Rule(model="sim-large", match=q, replies=[f"{a} plus {b} is {a + b}."]),
        ]
    return SimulatorConfig(models=["sim-small", "sim-large"], rules=rules)


async def test_cascade_agreement_threshold_is_fitted_without_model_calls(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(cascade_script())
    problems = await run_set(rt, CASCADE_STRICT)
    before = simulator.stats.requests
    sources, skipped = await load_sources(rt, problems, kind="cascade", source_field="results")
    fit = await calibrate_cascade(
        rt, sources, CASCADE_STRICT, Objective(), tenant="default", source_field="results"
    )

    assert simulator.stats.requests == before and fit.live_calls == 0 and skipped == []
    by_t = {c.values["min_agreement"]: c for c in fit.candidates}
    assert sorted(by_t) == [0.25, 0.625, 0.875, 1.0]
    assert all(c.complete for c in fit.candidates)  # the strict run covers every lower one
    assert [by_t[t].accuracy for t in sorted(by_t)] == [0.75, 1.0, 1.0, 1.0]
    assert [by_t[t].large_share for t in sorted(by_t)] == [0.0, 0.25, 0.75, 0.75]
    assert fit.chosen.values == {"min_agreement": 0.625}
    assert fit.defaults == {"min_agreement": 1.0} and fit.spec["min_agreement"] == 0.625
    assert 0 < (fit.chosen.mean_large_tokens or 0) < (by_t[0.875].mean_large_tokens or 0)

    # Escalating no problem at all leaves only the inaccurate 0.25.
    capped = await calibrate_cascade(
        rt, sources, CASCADE_STRICT, Objective(target_large_share=0.0), tenant="default",
        source_field="results",
    )  # fmt: skip
    assert capped.chosen.values == {"min_agreement": 0.25} and capped.chosen.accuracy == 0.75

    with pytest.raises(InvalidInput) as refused:
        await calibrate_cascade(
            rt, sources, {"kind": "direct"}, Objective(), tenant="default", source_field="results"
        )
    assert refused.value.field == "strategy.kind"
