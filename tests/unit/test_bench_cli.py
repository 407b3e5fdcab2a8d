"""``ponder bench``: its arguments, without running any benchmark."""

from __future__ import annotations

import pytest

from app.cli import parse_args
from bench import suite


def test_help_lists_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["bench", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--quick", "--json", "--peers", "--only", "--out"):
        assert flag in out


@pytest.mark.parametrize(
    "argv",
    [["bench", "--only", "everything"], ["bench", "--fast"], ["bench", "extra"]],
)
def test_bad_input_is_rejected(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_peers_only_when_asked() -> None:
    quick = parse_args(["bench", "--quick"])
    assert "peers" not in suite._sections(quick)
    assert suite._sections(quick) == ["call", "job", "throughput", "fanout", "sse", "load"]
    with_peers = parse_args(["bench", "--quick", "--peers", "--only", "sse"])
    assert suite._sections(with_peers) == ["sse", "peers"]
