"""Settings errors in one sentence each, naming the ``PONDER_*`` variable to fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.settings_errors import BadSettings, env_name, load_settings

ROOT = Path(__file__).resolve().parents[2]


def ponder(
    tmp_path: Path, env_vars: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PONDER_")}
    env.update(PONDER_DATA_DIR=str(tmp_path / "data"), **env_vars)
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("env_vars", "sentences"),
    [
        (
            {"PONDER_POOLS__SMALL__ENDPOINTS": '["http://127.0.0.1:9"]'},
            [
                "PONDER_POOLS__SMALL__MODEL is required "
                '(pool "small" has endpoints but no model name)'
            ],
        ),
        (
            {"PONDER_POOLS__LARGE__MODEL": "m", "PONDER_POOLS__LARGE__KIND": "vllm"},
            [
                "PONDER_POOLS__LARGE__ENDPOINTS is required "
                '(pool "large" has model name and kind but no endpoints)'
            ],
        ),
        (
            {"PONDER_WORKER__HEARTBEAT_S": "soon"},
            [
                "PONDER_WORKER__HEARTBEAT_S: input should be a valid number, unable to parse "
                "string as a number (got 'soon')"
            ],
        ),
        (
            {"PONDER_EMBEDDED__ROLES": '["huge"]', "PONDER_ENVIRONMENT": "prod"},
            [
                "PONDER_ENVIRONMENT: input should be 'development', 'production' or 'test' "
                "(got 'prod')",
                "PONDER_EMBEDDED__ROLES: input should be 'small' or 'large' (got 'huge')",
            ],
        ),
        (
            {"PONDER_POOLS__SMALL__ENDPOINTS": '["gpu1:8000"]', "PONDER_POOLS__SMALL__MODEL": "m"},
            [
                "PONDER_POOLS__SMALL__ENDPOINTS: endpoint 'gpu1:8000' must start with http:// or "
                "https://"
            ],
        ),
        (
            {"PONDER_POOLS__SMALL__ENDPOINTS": "http://gpu1:8000"},
            [
                "a PONDER_POOLS__* variable is not valid JSON (lists and objects must be JSON, "
                "e.g. PONDER_POOLS__SMALL__ENDPOINTS='[\"http://10.0.0.5:8000\"]')"
            ],
        ),
    ],
)
def test_each_error_is_one_sentence_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env_vars: dict[str, str], sentences: list[str]
) -> None:
    for name in [k for k in os.environ if k.startswith("PONDER_")]:
        monkeypatch.delenv(name)
    for name, value in env_vars.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(BadSettings) as caught:
        load_settings(_env_file=None)
    assert caught.value.sentences == sentences
    assert "pydantic" not in caught.value.message


def test_env_names_follow_the_nesting() -> None:
    assert env_name(("pools", "small", "model")) == "PONDER_POOLS__SMALL__MODEL"
    assert env_name(("pools", "small", "endpoints", 0)) == "PONDER_POOLS__SMALL__ENDPOINTS"
    assert env_name(("data_dir",)) == "PONDER_DATA_DIR"


def test_solve_with_a_pool_missing_its_model_exits_2_with_one_line(tmp_path: Path) -> None:
    done = ponder(
        tmp_path,
        {"PONDER_POOLS__SMALL__ENDPOINTS": json.dumps(["http://127.0.0.1:9"])},
        "solve",
        "What is 2 + 3?",
    )
    assert done.returncode == 2
    assert done.stderr == (
        "ponder: bad settings: PONDER_POOLS__SMALL__MODEL is required "
        '(pool "small" has endpoints but no model name)\n'
    )
    assert not (tmp_path / "data").exists()  # nothing was started or written


def test_two_bad_variables_give_two_lines(tmp_path: Path) -> None:
    done = ponder(
        tmp_path,
        {"PONDER_WORKER__STALE_AFTER_S": "-1", "PONDER_EMBEDDED__THREADS": "0"},
        "strategies",
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "ponder: bad settings: PONDER_EMBEDDED__THREADS: input should be greater than or "
        "equal to 1 (got '0')",
        "ponder: bad settings: PONDER_WORKER__STALE_AFTER_S: input should be greater than 0 "
        "(got '-1')",
    ]
    assert "errors.pydantic.dev" not in done.stderr and "Traceback" not in done.stderr


def test_entry_points_exit_2_with_the_sentence(tmp_path: Path) -> None:
    """What the API's ``app`` (uvicorn's entry point) calls before building the app."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PONDER_")}
    env["PONDER_POOLS__SMALL__ENDPOINTS"] = '["http://127.0.0.1:9"]'
    done = subprocess.run(
        [sys.executable, "-c", "from core.settings_errors import settings_or_exit\n"
         "settings_or_exit('ponder api')"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == (
        "ponder api: bad settings: PONDER_POOLS__SMALL__MODEL is required "
        '(pool "small" has endpoints but no model name)\n'
    )
