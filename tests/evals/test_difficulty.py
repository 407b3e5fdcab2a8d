"""`ponder eval`'s per-problem difficulty signal: probe jobs, bins on every row, the
report's per-bin table, replays without model calls, and compute_optimal per bin.

Six problems. The agreement probe (4 samples on sim-small, default system prompt) gets
one reply four times on e1-e3 (agreement value 0: easy) and four different replies on
h1-h3 (value 1 - 1/4 = 0.75: hard; defaults easy <= 0, hard >= 0.5). Two arms:

| problem | expected | cheap: direct small, "Quick." (5 tokens) | expensive: direct large (14) |
|---|---|---|---|
| e1-e3 | 2, 4, 6  | right on all three                        | right on e1, e2; wrong on e3 |
| h1-h3 | 7, 8, 9  | wrong on all three                        | right on all three           |

Per bin: easy cheap 3/3 at 5 tokens, expensive 2/3 at 14; hard cheap 0/3, expensive 3/3.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from app.cli import main
from core.calibration.table import choices, probe_params, table_from_results
from core.errors import InvalidInput
from core.runtime import Runtime
from core.simulator.config import Rule, SimulatorConfig
from core.simulator.server import Simulator
from evals.arms import parse_arms
from evals.backends import LocalBackend, RestBackend
from evals.dataset import load_dataset
from evals.difficulty import ProbeSettings
from evals.experiments import LocalStore, RestStore
from evals.results import EvalRun, load_results
from evals.runs import Options, evaluate, replay
from tests.evals.conftest import write_lines
from tests.evals.test_cli import cli_env
from tests.evals.test_rest import api_url, backend  # noqa: F401 - fixtures

EASY = {"e1": ("What is 1 + 1?", "2"), "e2": ("What is 2 + 2?", "4"), "e3": ("What is 3 + 3?", "6")}
HARD = {"h1": ("What is 3 + 4?", "7"), "h2": ("What is 4 + 4?", "8"), "h3": ("What is 4 + 5?", "9")}
PROBLEMS = [{"id": k, "question": q, "answer": a} for k, (q, a) in {**EASY, **HARD}.items()]
CHEAP = '{"kind": "direct", "system": "Quick."}'
EXPENSIVE = '{"kind": "direct", "role": "large"}'
CHEAP_LABEL = 'direct system="Quick."'
EXPENSIVE_LABEL = 'direct role="large"'


def reply(value: str, long: bool = False) -> str:
    return f"Let me work it out step by step. The answer is {value}." if long else (
        f"The answer is {value}."
    )  # fmt: skip


def difficulty_script() -> SimulatorConfig:
    rules = []
    for pid, (question, expected) in {**EASY, **HARD}.items():
        q = re.escape(question)
        wrong = str(int(expected) + 1)
        cheap = expected if pid in EASY else wrong
        expensive = wrong if pid == "e3" else expected
        probe = [reply(expected)] if pid in EASY else [reply(str(i)) for i in (1, 2, 3, 4)]
        rules += [
            Rule(match=rf"system: Quick\..*{q}", replies=[reply(cheap)], pick="first"),
            Rule(match=q, model="sim-small", replies=probe),  # the probe: cycles
            Rule(match=q, model="sim-large", replies=[reply(expensive, long=True)], pick="first"),
        ]
    return SimulatorConfig(models=["sim-small", "sim-large"], rules=rules)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_lines(tmp_path / "six.jsonl", PROBLEMS)


@pytest.fixture
def sim(simulator: Simulator) -> Simulator:
    simulator.set_config(difficulty_script())
    return simulator


async def run_binned(rt: Runtime, dataset: Path, out: Path) -> EvalRun:
    options = Options(out=out, name="six", concurrency=3, difficulty=ProbeSettings())
    arms = parse_arms([CHEAP, EXPENSIVE])
    return await evaluate(
        LocalBackend(rt), load_dataset(dataset), arms, options, store=LocalStore(rt.sessions)
    )


async def test_rows_carry_the_signal_and_bin_and_the_report_bins_them(
    rt: Runtime, sim: Simulator, dataset: Path, tmp_path: Path
) -> None:
    run = await run_binned(rt, dataset, tmp_path / "out")
    # 6 probe calls (n=4 each), then 6 + 6 arm calls; the probes are counted apart.
    assert sim.stats.requests == 18 and sim.stats.choices_generated == 6 * 4 + 12
    assert run.calls() == (12, 0) and run.probe_calls() == (6, 0)

    data = load_results(tmp_path / "out" / "results.json")
    signal = {(r["strategy"], r["problem_id"]): (r["difficulty"], r["difficulty_bin"])
              for r in data["rows"]}  # fmt: skip
    for label in (CHEAP_LABEL, EXPENSIVE_LABEL):
        assert [signal[(label, pid)] for pid in EASY] == [(0.0, "easy")] * 3
        assert [signal[(label, pid)] for pid in HARD] == [(0.75, "hard")] * 3
    recorded = data["settings"]["difficulty"]
    assert (recorded["probe"], recorded["probe_role"], recorded["probe_samples"]) == (
        "agreement", "small", 4,
    )  # fmt: skip
    assert (recorded["easy_max"], recorded["hard_min"]) == (0.0, 0.5)
    assert recorded["bins"] == {"easy": 3, "normal": 0, "hard": 3, "unknown": 0}
    assert recorded["calls"] == {"live": 6, "replayed": 0}
    e1 = recorded["problems"][0]
    assert (e1["problem_id"], e1["value"], e1["bin"], e1["seen"]) == (
        "e1", 0.0, "easy", {"votes": {"2": 4}},
    )  # fmt: skip
    # Every probe is an ordinary job: a compute_optimal that probed and ran no arm.
    probe_record = await LocalBackend(rt).run(e1["job_id"])
    assert [name for name, _ in probe_record.events] == ["probe", "difficulty", "no_arm_fits"]

    by_bin = {(b["strategy"], b["bin"]): (b["n"], b["accuracy"], b["mean_tokens"])
              for b in data["difficulty_summary"]}  # fmt: skip
    assert by_bin == {
        (CHEAP_LABEL, "easy"): (3, 1.0, 5.0),
        (CHEAP_LABEL, "hard"): (3, 0.0, 5.0),
        (EXPENSIVE_LABEL, "easy"): (3, 2 / 3, 14.0),
        (EXPENSIVE_LABEL, "hard"): (3, 1.0, 14.0),
    }
    report = (tmp_path / "out" / "report.md").read_text()
    assert "- difficulty: agreement probe on small, easy <= 0.0, hard >= 0.5: 3 easy, " \
        "0 normal, 3 hard; probe calls: 6 live, 0 replayed" in report  # fmt: skip
    section = report[report.index("## By difficulty") :]
    assert "| strategy | bin | n | accuracy | mean tokens |" in section
    assert f"| {CHEAP_LABEL} | easy | 3 | 100.0% | 5.0 |" in section
    assert f"| {EXPENSIVE_LABEL} | easy | 3 | 66.7% | 14.0 |" in section
    assert f"| {CHEAP_LABEL} | hard | 3 | 0.0% | 5.0 |" in section

    # The stored experiment's rows carry them too (the value in its column).
    assert run.experiment_id is not None
    stored = await LocalStore(rt.sessions).load(run.experiment_id)
    assert {(r["strategy"], r["problem_id"]): (r["difficulty"], r["difficulty_bin"])
            for r in stored["rows"]} == signal  # fmt: skip
    assert stored["settings"]["difficulty"]["bins"]["hard"] == 3

    # The fitted compute_optimal chooses per bin: cheap on easy, expensive on hard.
    table = table_from_results(data)
    picked = {b: a.label if a else None for b, a in choices(table, 100).items()}
    assert picked == {"all": EXPENSIVE_LABEL, "easy": CHEAP_LABEL, "hard": EXPENSIVE_LABEL}
    assert probe_params(data) == {
        "probe": "agreement", "probe_role": "small", "probe_samples": 4, "probe_tokens": 128,
        "temperature": 0.7, "top_logprobs": 10, "easy_max": 0.0, "hard_min": 0.5,
    }  # fmt: skip


async def test_replays_reread_the_probes_with_zero_model_calls(
    rt: Runtime, sim: Simulator, dataset: Path, tmp_path: Path
) -> None:
    first = await run_binned(rt, dataset, tmp_path / "out")
    requests = sim.stats.requests
    source = tmp_path / "out" / "results.json"
    store = LocalStore(rt.sessions)
    again = await replay(
        LocalBackend(rt), load_results(source), source, [], Options(tmp_path / "re", "re"),
        store=store,
    )  # fmt: skip
    assert sim.stats.requests == requests
    assert again.calls() == (0, 12) and again.probe_calls() == (0, 6)
    before = {(r.strategy, r.problem_id): (r.difficulty, r.difficulty_bin) for r in first.rows}
    after = {(r.strategy, r.problem_id): (r.difficulty, r.difficulty_bin) for r in again.rows}
    assert after == before
    probes = again.settings["difficulty"]["problems"]
    old_probes = first.settings["difficulty"]["problems"]
    assert [p["value"] for p in probes] == [p["value"] for p in old_probes]
    assert all(p["job_id"] != o["job_id"] for p, o in zip(probes, old_probes, strict=True))
    assert again.by_difficulty() == first.by_difficulty()

    # `--replay EXPERIMENT_ID`: the stored experiment, strictly; no model call either.
    assert first.experiment_id is not None
    previous = await store.load(first.experiment_id)
    stored = await replay(
        LocalBackend(rt), previous, "experiment", [], Options(tmp_path / "ex", "ex"),
        store=store, what_if="strict",
    )  # fmt: skip
    assert sim.stats.requests == requests
    assert stored.probe_calls() == (0, 6)
    assert {(r.strategy, r.problem_id): (r.difficulty, r.difficulty_bin)
            for r in stored.rows} == before  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--difficulty-probe", "bogus"], "--difficulty-probe must be one of agreement, entropy"),
        (["--difficulty-thresholds", "0.6,0.2"], "difficulty_thresholds: need 0 <= EASY_MAX"),
        (["--difficulty-thresholds", "x"], "difficulty_thresholds: give EASY_MAX,HARD_MIN"),
        (["--difficulty-probe", "none", "--difficulty-thresholds", "0,1"], "needs a --difficulty"),
    ],
)
def test_bad_probe_flags_exit_2_before_anything_runs(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    dataset: Path,
    tmp_path: Path,
    flags: list[str],
    message: str,
) -> None:
    monkeypatch.setenv("PONDER_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(SystemExit) as exited:
        main(["eval", "--dataset", str(dataset), "--strategy", "direct", *flags])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "data" / "evals").exists()


async def test_over_rest_the_bins_are_stored_and_the_replay_calls_nothing(
    backend: RestBackend,  # noqa: F811 - the fixture
    sim: Simulator,
    dataset: Path,
    tmp_path: Path,
) -> None:
    """`ponder eval --url --difficulty-probe agreement`: the probes are jobs on the server;
    the server stores each row's value, the bins come back from the experiment's
    settings."""
    store = RestStore(backend.client)
    options = Options(tmp_path / "out", "rest", concurrency=3, difficulty=ProbeSettings())
    arms = parse_arms([CHEAP, EXPENSIVE])
    run = await evaluate(backend, load_dataset(dataset), arms, options, store=store)
    assert sim.stats.requests == 18 and run.probe_calls() == (6, 0)
    assert run.experiment_id is not None
    stored = await store.load(run.experiment_id)
    signal = {(r.strategy, r.problem_id): (r.difficulty, r.difficulty_bin) for r in run.rows}
    assert {(r["strategy"], r["problem_id"]): (r["difficulty"], r["difficulty_bin"])
            for r in stored["rows"]} == signal  # fmt: skip
    assert signal[(EXPENSIVE_LABEL, "h2")] == (0.75, "hard")

    again = await replay(
        backend, stored, "experiment", [], Options(tmp_path / "re", "re"), store=store,
        what_if="strict",
    )  # fmt: skip
    assert sim.stats.requests == 18
    assert again.calls() == (0, 12) and again.probe_calls() == (0, 6)
    assert again.by_difficulty() == run.by_difficulty()


def test_the_command_probes_by_default_and_its_replay_calls_nothing(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    sim: Simulator,
    dataset: Path,
    tmp_path: Path,
) -> None:
    """`ponder eval` with a `small` pool probes (agreement) without being asked."""
    for name in [n for n in os.environ if n.startswith("PONDER_")]:
        monkeypatch.delenv(name)
    for name, value in cli_env(tmp_path, sim.url).items():
        if name.startswith("PONDER_"):
            monkeypatch.setenv(name, value)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exited:
        main(["eval", "--dataset", str(dataset), "--strategy", CHEAP, "--strategy", EXPENSIVE,
              "--out", str(out), "--name", "six"])  # fmt: skip
    printed = capsys.readouterr()
    assert exited.value.code == 0, printed.err
    assert "model calls: 12 live, 0 replayed from journals; difficulty probes: 6 live" in (
        printed.out
    )
    rows = load_results(out / "results.json")["rows"]
    assert [r["difficulty_bin"] for r in rows] == (["easy"] * 3 + ["hard"] * 3) * 2
    requests = sim.stats.requests
    with pytest.raises(SystemExit) as exited:
        main(["eval", "--replay", str(out / "results.json"), "--out", str(tmp_path / "re")])
    printed = capsys.readouterr()
    assert exited.value.code == 0, printed.err
    assert sim.stats.requests == requests
    assert "0 live, 12 replayed from journals; difficulty probes: 0 live, 6 replayed" in printed.out


async def test_an_eval_whose_every_probe_fails_stops_before_the_arms(
    rt: Runtime, sim: Simulator, dataset: Path, tmp_path: Path
) -> None:
    options = Options(tmp_path / "out", "six", difficulty=ProbeSettings(probe_role="nobody"))
    with pytest.raises(InvalidInput, match="every agreement probe on role 'nobody' failed"):
        await evaluate(LocalBackend(rt), load_dataset(dataset), parse_arms([CHEAP]), options)
    assert sim.stats.requests == 0
