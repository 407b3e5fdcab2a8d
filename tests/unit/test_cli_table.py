"""The ``ponder`` command table: every command listed, each loaded only when chosen, and a
missing package named in one sentence instead of a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app import cli
from app.commands import is_loopback

ROOT = Path(__file__).resolve().parents[2]


def ponder_without(
    blocked: list[str], *args: str, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    """``ponder ARGS`` in a process where ``blocked`` modules cannot be imported, as in an
    install that lacks them (``sys.modules[name] = None`` makes ``import name`` fail)."""
    code = (
        "import sys\n"
        f"for name in {blocked!r}:\n"
        "    sys.modules[name] = None\n"
        "from app.cli import main\n"
        f"main({list(args)!r})\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PONDER_")}
    env["PONDER_DATA_DIR"] = str(tmp_path / "data")
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name, command in cli.COMMANDS.items():
        assert f"    {name}" in out, name
        assert command.help.split()[0] in out
    assert set(cli.COMMANDS) >= {
        "solve", "resume", "replay", "trace", "strategies", "db", "simulate", "models",
        "keys", "worker", "serve", "eval", "calibrate", "bench",
    }  # fmt: skip


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_builds_its_arguments(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args([name, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: ponder {name}" in capsys.readouterr().out


def test_start_up_imports_no_command_module() -> None:
    code = (
        "import sys\n"
        "from app import cli\n"
        "cli.build_parser()\n"
        "cli.parse_args(['solve', 'q'])\n"
        "cli.parse_args(['keys', 'list'])\n"
        "heavy = {'bench', 'evals', 'matplotlib', 'tests'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_bench_outside_a_checkout_says_what_it_needs(tmp_path: Path) -> None:
    done = ponder_without(["tests"], "bench", "--quick", "--only", "call", tmp_path=tmp_path)
    assert done.returncode == 2
    expected = f"ponder: {cli.CHECKOUT.sentence} (missing module 'tests')\n"
    assert done.stderr == expected


def test_bench_not_installed_at_all(tmp_path: Path) -> None:
    done = ponder_without(["bench"], "bench", "--quick", tmp_path=tmp_path)
    assert done.returncode == 2
    assert done.stderr == f"ponder: {cli.CHECKOUT.sentence} (missing module 'bench')\n"


@pytest.mark.parametrize(
    ("blocked", "args"),
    [
        ("evals", ["eval", "--dataset", "d.jsonl", "--strategy", "direct"]),
        ("evals", ["calibrate", "glimp_router", "--results", "r.json"]),
    ],
)
def test_eval_and_calibrate_name_what_is_missing(
    blocked: str, args: list[str], tmp_path: Path
) -> None:
    done = ponder_without([blocked], *args, tmp_path=tmp_path)
    assert done.returncode == 2
    assert done.stderr == f"ponder: {cli.EVALS.sentence} (missing module {blocked!r})\n"


def test_other_commands_work_without_bench_and_evals(tmp_path: Path) -> None:
    done = ponder_without(["bench", "evals", "tests"], "strategies", "--json", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert '"direct"' in done.stdout


def test_models_prepare_without_the_embedded_extra(tmp_path: Path) -> None:
    done = ponder_without(["xllamacpp"], "models", "prepare", tmp_path=tmp_path)
    assert done.returncode == 2
    assert done.stderr == (
        "ponder: ponder models prepare needs the embedded extra, which is not installed "
        "(missing xllamacpp; install it with pip install 'ponder[embedded]')\n"
    )


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LocalHost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("example.com", False),
        ("", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
