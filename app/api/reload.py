"""SIGHUP in the API process: re-read ``PONDER_CONFIG`` (and the environment) and serve
the new pools, tools and tenant limits, without dropping a request or a job.

- Pools and tools are swapped in place (``Runtime.reload``): a job running here (the
  interactive lane, the in-process executor) keeps the clients it holds; the next job,
  the next ``/v1/pools`` and the next submission's role check see the new ones.
- Tenant limits (default and largest budgets, jobs in flight, rates) apply from the
  next request.
- A bad file changes nothing: each error is logged as one sentence naming the line.

Only the main thread's event loop can take the signal (``loop.add_signal_handler``); an
app served from another thread (tests) is reloaded by calling ``reload()``.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from app.api.deps import ApiState
from app.api.limits import Limiter
from app.api.settings import load_api_settings
from core.config_file import config_path
from core.runtime import Runtime
from core.settings_errors import BadSettings, load_settings

log = logging.getLogger(__name__)


class ConfigReloader:
    """Applies re-read settings to one API process's state.

    Args:
        state: what the routes share.
        runtime: the process's pools and tools.
        limiter: the per-tenant rate limiter (it reads the tenant limits).
        pools: whether pools come from the settings (False: the app was given its pools,
            e.g. the embedded models', which a file does not replace).
    """

    def __init__(self, state: ApiState, runtime: Runtime, limiter: Limiter, *, pools: bool) -> None:
        self.state = state
        self.runtime = runtime
        self.limiter = limiter
        self.pools = pools
        self._installed = False

    def reload(self) -> bool:
        """Re-read and apply; False (and each error logged) when the settings are bad."""
        try:
            core, api = load_settings(), load_api_settings()
        except BadSettings as exc:
            for sentence in exc.sentences:
                log.error("config not reloaded, keeping the previous one: %s", sentence)
            return False
        changed = self.runtime.reload(core, pools=self.pools)
        state = self.state
        state.settings = self.runtime.settings
        state.pool_settings = self.runtime.pool_settings
        if (api.limits, api.tenant_limits) != (state.api.limits, state.api.tenant_limits):
            state.api = state.api.model_copy(
                update={"limits": api.limits, "tenant_limits": api.tenant_limits}
            )
            self.limiter.api = state.api
            changed.append("tenant limits")
        log.info(
            "config reloaded from %s: %s",
            config_path() or "the environment",
            "; ".join(changed) or "nothing changed",
        )
        return True

    def _on_signal(self) -> None:
        try:
            self.reload()
        except Exception:
            log.exception("config reload failed; the previous configuration stays")

    def install(self) -> None:
        """Reload on SIGHUP, if this is the main thread's loop."""
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_signal)
        except (ValueError, RuntimeError, NotImplementedError):
            return  # not the main thread (an app served by a test's thread)
        self._installed = True

    def remove(self) -> None:
        if self._installed:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._installed = False
