"""One long-lived asyncio event loop per worker process, and what lives on it.

Celery prefork tasks are synchronous, but a job is a tree of coroutines whose pools,
httpx connection pools and database engines belong to the loop that created them. So
each worker process runs one loop in a background thread, opens one ``Runtime`` and one
``JobMonitor`` on it (on ``worker_process_init``, after the fork: nothing here may be
inherited from the parent), and tasks submit coroutines to it and wait.

Waiting in the task's own thread keeps Celery's soft time limit working: prefork raises
``SoftTimeLimitExceeded`` in that thread, which then asks the loop to stop the job.

SIGHUP reloads the config file (``PONDER_CONFIG``) instead of Celery's default (a
restart of the whole worker, after its running jobs end). The main process checks the
file and, when it is good, tells its pool processes with ``POOL_RELOAD_SIGNAL``
(billiard makes SIGHUP end a pool process); each swaps its pool clients and tools
(``Runtime.reload``), and running jobs finish on the clients they hold. A bad file is
logged in one sentence per error and changes nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Coroutine
from types import FrameType
from typing import Any, TypeVar

from celery.signals import worker_ready

from core.breaker_reports import BreakerReporter
from core.cancel import JobMonitor, StopReason, worker_identity
from core.logs import bound
from core.runner import ReleasedLease, RunOutcome
from core.runtime import Runtime
from core.settings import Settings
from core.settings_errors import BadSettings, load_settings

log = logging.getLogger(__name__)

T = TypeVar("T")

_OPEN_TIMEOUT_S = 60.0
_CLOSE_TIMEOUT_S = 15.0


class WorkerRuntime:
    """The loop thread, the runtime (database, pools) and the job monitor of one process.

    Example::

        wr = WorkerRuntime(Settings())
        wr.start()
        outcome = wr.run_job(job_id)     # blocks this thread until the job is done
        wr.close()
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pid = os.getpid()
        self.worker = worker_identity()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="ponder-worker-loop", daemon=True)
        self._runtime: Runtime | None = None
        self.monitor: JobMonitor | None = None
        self.breakers: BreakerReporter | None = None

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def start(self) -> None:
        self._thread.start()
        self.call(self._open(), timeout=_OPEN_TIMEOUT_S)

    async def _open(self) -> None:
        # Every configured pool: which roles a job needs is known only per job. No
        # configured pools means none here (a worker never starts the embedded models
        # itself: `ponder worker` / `ponder serve` start them once and pass them on).
        roles = set(self.settings.pools)
        if not roles:
            log.warning(
                "this worker has no model pools configured (PONDER_POOLS__<ROLE>__...); "
                "jobs that need a model will fail with pool_unavailable"
            )
        runtime = Runtime(self.settings, pools=self.settings.pools)
        await runtime.__aenter__()
        self._runtime = runtime
        # Every breaker opening and closing goes to the database: /v1/pools shows it.
        self.breakers = BreakerReporter(runtime.sessions, self.worker)
        self.breakers.watch(runtime.pools)
        worker = self.settings.worker
        self.monitor = JobMonitor(
            runtime.sessions,
            worker=self.worker,
            cancel_poll_s=worker.cancel_poll_s,
            heartbeat_s=worker.heartbeat_s,
            stale_after_s=worker.stale_after_s,
            max_attempts=worker.max_attempts,
            time_limit=lambda max_seconds: worker.time_limits(max_seconds)[0],
            heartbeat_engine=runtime.sync_engine,
        )
        log.info("worker runtime ready: %s, pools %s", self.worker, sorted(roles) or "none")

    def reload(self, settings: Settings) -> list[str]:
        """Serve ``settings``' pools and tools from now on (thread-safe; blocks until done)."""
        return self.call(self._reload(settings), timeout=_OPEN_TIMEOUT_S)

    async def _reload(self, settings: Settings) -> list[str]:
        assert self._runtime is not None
        changed = self._runtime.reload(settings)
        self.settings = self._runtime.settings
        if self.breakers is not None and any(c.startswith("pools") for c in changed):
            self.breakers.watch(self._runtime.pools)  # the new clients' breakers
        return changed

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return self.submit(coro).result(timeout)

    def run_job(
        self, job_id: str, released: ReleasedLease | None = None
    ) -> concurrent.futures.Future[RunOutcome]:
        """Start running the job on the loop; the future resolves with its outcome."""
        return self.submit(self._run(job_id, released))

    async def _run(self, job_id: str, released: ReleasedLease | None) -> RunOutcome:
        assert self._runtime is not None and self.monitor is not None
        # This loop's thread does not see the task's context: bind the job's id here, for
        # the run's lines and the tasks it starts (which copy this context).
        with bound(job_id=job_id):
            return await self._runtime.runner.run(job_id, monitor=self.monitor, released=released)

    def stop_job(self, job_id: str, reason: StopReason, detail: str = "") -> None:
        """Ask the loop to stop a running job (thread-safe)."""
        monitor = self.monitor
        if monitor is not None:
            self._loop.call_soon_threadsafe(monitor.stop, job_id, reason, detail)

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            self.call(self._close(), timeout=_CLOSE_TIMEOUT_S)
        except Exception:
            log.exception("worker runtime did not close cleanly")
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=_CLOSE_TIMEOUT_S)
            if not self._thread.is_alive():
                self._loop.close()

    async def _close(self) -> None:
        if self.monitor is not None:
            await self.monitor.close()
        if self.breakers is not None:
            await self.breakers.flush()
        if self._runtime is not None:
            await self._runtime.__aexit__(None, None, None)


POOL_RELOAD_SIGNAL = signal.SIGURG
"""What the main process sends its pool processes on a good SIGHUP. After Celery's
initializer, billiard makes every terminating signal (SIGHUP, SIGUSR1, and with a broker
without async I/O, such as the filesystem one, SIGUSR2 and the rest) end a pool process.
It leaves SIGURG alone, whose default is to be ignored: a process that has not yet
installed the handler ignores it rather than dying. Nothing else sends it here (no
socket of ours asks for out-of-band data signals)."""

_lock = threading.Lock()
_current: WorkerRuntime | None = None


def worker_runtime() -> WorkerRuntime:
    """This process's runtime, started on first use (or by ``worker_process_init``).

    A runtime created before a fork belongs to the parent: the child starts its own.
    """
    global _current
    with _lock:
        if _current is None or _current.pid != os.getpid():
            # Before the settings are read, not once the runtime is open: a reload
            # signalled while it opens is then handled (its thread waits for this lock and
            # applies the file to the open runtime) instead of ignored, which left a pool
            # process that was starting on the old file until the next SIGHUP.
            install_reload_handler(POOL_RELOAD_SIGNAL)
            runtime = WorkerRuntime(Settings())
            runtime.start()
            _current = runtime
        return _current


def shutdown_worker_runtime() -> None:
    global _current
    with _lock:
        runtime, _current = _current, None
    if runtime is not None and runtime.pid == os.getpid():
        runtime.close()


def _current_runtime() -> WorkerRuntime | None:
    with _lock:
        runtime = _current
    return runtime if runtime is not None and runtime.pid == os.getpid() else None


def reload_config() -> bool:
    """Re-read the settings (the config file and the environment) and apply them to this
    process's runtime, if it has one, and to its Celery pool processes (by
    ``POOL_RELOAD_SIGNAL``).

    Returns whether the new settings were good. Bad ones are logged, one sentence per
    error, and the process keeps what it had.
    """
    try:
        settings = load_settings()
    except BadSettings as exc:
        for sentence in exc.sentences:
            log.error("config not reloaded, keeping the previous one: %s", sentence)
        return False
    runtime = _current_runtime()
    if runtime is not None:
        changed = runtime.reload(settings)
        log.info("config reloaded: %s", "; ".join(changed) or "nothing changed")
    from billiard.process import active_children

    children = [child.pid for child in active_children() if child.pid is not None]
    for pid in children:
        # A pool process that just exited is gone; its replacement reads the file itself.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, POOL_RELOAD_SIGNAL)
    if children:
        log.info("config file good: pool processes %s reload it", children)
    return True


def _on_signal(signum: int, frame: FrameType | None) -> None:
    # Off the signal handler: the main thread may be inside the logging machinery or
    # waiting for a job, and the reload waits for the runtime's loop.
    threading.Thread(target=_reload_logged, name="ponder-config-reload", daemon=True).start()


def _reload_logged() -> None:
    try:
        reload_config()
    except Exception:
        log.exception("config reload failed; the previous configuration stays")


def install_reload_handler(signum: int = signal.SIGHUP) -> None:
    """``signum`` reloads the config (``reload_config``), in the main thread of a Celery
    process only: a thread pool's runtime is reloaded by its main process's handler."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signum, _on_signal)


@worker_ready.connect
def _install_main_reload_handler(**_: Any) -> None:
    # After Celery's platform tweaks, which make SIGHUP restart the whole worker.
    install_reload_handler()
