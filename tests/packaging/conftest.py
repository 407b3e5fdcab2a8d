"""The browser fixtures of the dashboard tests, for ``/docs`` and ``/redoc`` here."""

from tests.e2e.conftest import browser, chromium_path

__all__ = ["browser", "chromium_path"]
