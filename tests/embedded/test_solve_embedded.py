"""The main job on the real embedded 0.5B model, as README command 1 runs it (kept short)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.sandbox import require_sandbox

ROOT = Path(__file__).resolve().parents[2]
QUESTION = (
    "A baker makes 12 muffins in the morning and 3 times as many in the afternoon. "
    "How many muffins does the baker make in total?"
)

pytestmark = [pytest.mark.embedded, pytest.mark.slow]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    data = tmp_path_factory.mktemp("embedded-solve")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PONDER_")}
    env["PONDER_DATA_DIR"] = str(data)
    return env


def ponder(env: dict[str, str], *args: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", *args, "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out: dict[str, object] = json.loads(result.stdout)
    return out


def test_self_consistency_on_the_embedded_model_then_strict_replay(env: dict[str, str]) -> None:
    solved = ponder(
        env,
        "solve",
        QUESTION,
        "--strategy",
        "self_consistency",
        "-p",
        "n=3",
        "-p",
        "max_tokens=256",
        "--seed",
        "1",
    )
    assert solved["answer"] == "48"
    usage = solved["usage"]
    assert isinstance(usage, dict) and usage["by_role"]["small"]["completion_tokens"] > 0

    replayed = ponder(env, "replay", str(solved["job_id"]), "--strict")
    # Strict replay starts no model server at all and answers every call from the journal.
    assert replayed["live_calls"] == 0
    assert replayed["journal_hits"] == usage["calls"]
    assert replayed["answer"] == solved["answer"] and replayed["votes"] == solved["votes"]


def test_program_of_thought_answers_from_a_sandboxed_run_and_replays_without_one(
    env: dict[str, str],
) -> None:
    require_sandbox()
    # GSM8K dev problem 4: 1956 + 1956 / 2.
    question = (
        "Salvadore earned $1956. Santo earned half of what Salvadore earned. How much money "
        "did the two men earn together?"
    )
    solved = ponder(env, "solve", question, "--strategy", "program_of_thought", "--seed", "1")
    assert solved["answer"] == "2934"
    usage = solved["usage"]
    assert isinstance(usage, dict)
    assert (usage["tool_calls"], usage["tool_executions"], usage["live_calls"]) == (1, 1, 1)

    replayed = ponder(env, "replay", str(solved["job_id"]), "--strict")
    again = replayed["usage"]
    assert isinstance(again, dict) and replayed["answer"] == "2934"
    # Zero model calls and zero executions, with the same spend reported.
    assert (again["live_calls"], again["tool_executions"], again["tool_journal_hits"]) == (0, 0, 1)
    assert again["tool_calls"] == usage["tool_calls"]
