"""Shared fixtures. Service-backed fixtures skip where the service is absent, except
under CI=true, where a missing service is a failure: CI must run every test."""

from __future__ import annotations

pytest_plugins = [
    "tests.fixtures.simulator",
    "tests.fixtures.database",
    "tests.fixtures.runtime",
]
