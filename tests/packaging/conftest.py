"""The browser fixtures of the dashboard tests, reused here to render ``/docs``."""

from tests.e2e.conftest import browser, chromium_path

__all__ = ["browser", "chromium_path"]
