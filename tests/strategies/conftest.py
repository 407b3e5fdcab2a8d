"""Strategy tests: each strategy against the scripted simulator on a SQLite store.

Strategies are pure algorithms over ``Context``; which database records their trace is
covered by the runner and store tests on both backends, so these run on SQLite only
(half the time of running every strategy twice).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.runtime import Runtime
from core.simulator.server import Simulator
from tests.fixtures.runtime import simulator_settings


@pytest.fixture
async def rt(
    simulator: Simulator, sqlite_database_url: str, tmp_path: Path
) -> AsyncIterator[Runtime]:
    """A runtime whose ``small`` and ``large`` pools are the simulator's models
    ``sim-small`` and ``sim-large`` (rules may match on ``model``)."""
    settings = simulator_settings(simulator.url, sqlite_database_url, tmp_path)
    async with Runtime(settings, roles={"small", "large"}) as runtime:
        yield runtime
