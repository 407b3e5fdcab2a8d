"""Celery tasks: ``run_job(job_id)``, thin and idempotent.

The task receives an id, never a row: it reloads the job (``Runner.run``), which skips a
finished job, a job cancelled before it ran, and a job another live worker holds; takes
the job's lease; runs the strategy from the top, its journal answering every call an
earlier run already paid for; and saves the outcome. A job's own failure (a model that
stays down, a bad spec) is a final job state, not a task failure: Celery retries only
infrastructure failures (the database or network under it), and model calls are
retried by the pool client alone.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import (
    setup_logging,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from core import telemetry
from core.errors import NotFound
from core.logs import LogSettings, bind, configure_logging
from core.runner import InfrastructureFailure, ReleasedLease, RunOutcome, is_infrastructure_error
from workers.celery_app import TASK_RUN_JOB, app, current_settings, ensure_broker_dir
from workers.runtime import shutdown_worker_runtime, worker_runtime
from workers.telemetry import install as install_telemetry

log = logging.getLogger(__name__)


@setup_logging.connect
def _configure_logging(
    loglevel: int | str | None = None, logfile: str | None = None, **_: Any
) -> None:
    # Connected, so Celery installs no handlers of its own: its lines and Ponder's share
    # one format (PONDER_LOG_FORMAT) and name the job they belong to.
    settings = LogSettings()
    if loglevel is not None:
        name = logging.getLevelName(loglevel) if isinstance(loglevel, int) else loglevel.upper()
        settings = settings.model_copy(update={"level": name})
    configure_logging(settings, stream=open(logfile, "a") if logfile else None)  # noqa: SIM115


@task_prerun.connect
def _bind_job(args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, **_: Any) -> None:
    # The task's own lines (retries, skips); the run on the runtime's loop binds its own.
    job_id = (kwargs or {}).get("job_id") or (args[0] if args else None)
    bind(job_id=str(job_id) if job_id is not None else None)


@task_postrun.connect
def _unbind_job(**_: Any) -> None:
    bind(job_id=None)


@worker_init.connect
def _prepare_broker(**_: Any) -> None:
    ensure_broker_dir(current_settings())


@worker_init.connect
def _start_telemetry(**_: Any) -> None:
    # OpenTelemetry export when OTEL_* asks (docs/observability.md). Prefork children
    # inherit it: the batch processor restarts its export thread after a fork.
    if telemetry.setup("ponder-worker") is not None:
        install_telemetry()


@worker_process_init.connect
def _open_runtime(**_: Any) -> None:
    # Eagerly, in each prefork child after the fork, so the first job does not pay for it
    # and a broken configuration shows at start. Solo and thread pools open it lazily.
    worker_runtime()


@worker_ready.connect
def _open_runtime_in_process(sender: Any = None, **_: Any) -> None:
    # Threads and solo pools run tasks in this process: open its runtime now, like a
    # prefork child does, so the first job does not pay for it. A thread pool runs its
    # jobs on the one runtime's loop, concurrently (``--concurrency`` threads).
    pool = type(getattr(sender, "pool", None)).__module__  # celery.concurrency.<kind>
    if pool.endswith((".thread", ".solo")):
        worker_runtime()


@worker_process_shutdown.connect
def _close_runtime(**_: Any) -> None:
    shutdown_worker_runtime()
    telemetry.shutdown()  # flush the spans of the jobs just ended


@worker_shutdown.connect
def _close_runtime_main(**_: Any) -> None:
    shutdown_worker_runtime()  # solo and thread pools run tasks in the main process
    telemetry.shutdown()


@app.task(name=TASK_RUN_JOB, bind=True, max_retries=None)
def run_job(
    self: Task[Any, Any],
    job_id: str,
    released: tuple[str, int] | list[Any] | None = None,
    failing_since: float | None = None,
) -> str:
    """Run one job to a final state; returns the job's status (Celery stores no result).

    ``released`` and ``failing_since`` are set by this task's own retries after an
    infrastructure failure: the lease the failed run left (worker, attempts) and when
    the failures began."""
    runtime = worker_runtime()
    lease = ReleasedLease(str(released[0]), int(released[1])) if released else None
    future = runtime.run_job(job_id, released=lease)
    try:
        try:
            outcome: RunOutcome = future.result()
        except SoftTimeLimitExceeded:
            # The monitor's own limit normally fires first; this is the backstop. Stop the
            # strategy and let the runner save the job as failed with code time_limit.
            runtime.stop_job(job_id, "time_limit", "Celery's soft time limit passed")
            outcome = future.result(timeout=runtime.settings.worker.hard_limit_extra_s)
    except NotFound:
        # The contract is enqueue-after-commit, so this is a worker on another database
        # or a job deleted since: nothing to run, and retrying cannot help.
        log.error("job %s: no such job in this worker's database; dropped", job_id)
        return "not_found"
    except Exception as exc:
        if not is_infrastructure_error(exc):
            raise
        # The retry names the lease this run left (if it had claimed the job), so any
        # process may take it over at once instead of waiting for it to go stale; the
        # job's attempts fence it against a claim made since. Retries are bounded by
        # time, not by count: an outage lasts as long as it lasts, and the interval
        # stays short so a job resumes within seconds of the database's return.
        worker = runtime.settings.worker
        now = time.time()
        since = failing_since if failing_since is not None else now
        if now - since >= worker.infra_retry_window_s:
            log.error("job %s: infrastructure still failing (%s); left to the reaper", job_id, exc)
            raise
        countdown = min(worker.infra_retry_max_interval_s, 0.5 * 2**self.request.retries)
        left = exc.released if isinstance(exc, InfrastructureFailure) else lease
        log.warning(
            "job %s: infrastructure failure (%s); retrying in %.1f s", job_id, exc, countdown
        )
        kwargs = {
            "released": [left.worker, left.attempts] if left else None,
            "failing_since": since,
        }
        raise self.retry(exc=exc, countdown=countdown, kwargs=kwargs) from exc
    skipped = outcome.extra.get("skipped")
    if skipped:
        log.info("job %s skipped: %s (status %s)", job_id, skipped, outcome.status)
    else:
        log.info("job %s %s in %.3f s", job_id, outcome.status, outcome.wall_s)
    return outcome.status
