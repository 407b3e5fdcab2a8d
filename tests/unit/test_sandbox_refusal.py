"""The Python sandbox refuses to start, in one sentence, where it cannot sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from core.errors import ConfigError
from core.tools import PythonSandbox, SandboxLimits, SandboxUnavailable
from core.tools.bwrap import RunAs, probe


def test_without_bubblewrap_it_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(SandboxUnavailable) as caught:
        PythonSandbox(bwrap=str(tmp_path / "bwrap"))
    assert "`bubblewrap` package" in caught.value.message
    assert caught.value.message.count(". ") == 0  # one sentence
    assert isinstance(caught.value, ConfigError)
    assert caught.value.to_dict()["code"] == "sandbox_unavailable"


def test_without_namespaces_it_names_the_capability_and_what_bwrap_said(
    tmp_path: Path,
) -> None:
    """What bubblewrap prints in a container whose seccomp profile forbids user namespaces."""
    fake = tmp_path / "bwrap"
    fake.write_text(
        "#!/bin/sh\n"
        "echo 'bwrap: No permissions to create new namespace, likely because the kernel "
        "does not allow non-privileged user namespaces.' >&2\n"
        "exit 1\n"
    )
    fake.chmod(0o755)
    refusal = probe(str(fake), RunAs(uid=None, gid=None))
    assert refusal is not None
    assert "No permissions to create new namespace" in refusal
    assert "create user namespaces" in refusal and "CAP_SYS_ADMIN" in refusal
    assert "seccomp" in refusal
    assert "never runs code unsandboxed" in refusal


def test_a_fake_bwrap_that_runs_nothing_is_not_trusted(tmp_path: Path) -> None:
    """Exit 0 is not enough: the probe must see its own program's output."""
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    assert probe(str(fake), RunAs(uid=None, gid=None)) is not None


@pytest.mark.parametrize(
    "bad",
    [{"cpu_seconds": 0}, {"wall_seconds": 0}, {"memory_bytes": 2**20}, {"max_processes": 0}],
)
def test_limits_reject_values_that_cannot_work(bad: dict[str, int]) -> None:
    with pytest.raises(ValidationError) as caught:
        SandboxLimits.model_validate(bad)
    assert caught.value.errors()[0]["loc"] == (next(iter(bad)),)


def test_limits_reject_unknown_names() -> None:
    with pytest.raises(ValidationError):
        SandboxLimits.model_validate({"cpu_secs": 3})
