"""docs/strategies.md is generated from the registry; it must not drift from the code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_strategies_doc_is_up_to_date() -> None:
    check = subprocess.run(
        [sys.executable, "scripts/strategies_doc.py", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
