"""The Celery app, configured from Ponder's settings (``celery -A workers.celery_app``).

Delivery guarantees, in the order a job meets them:

- ``task_acks_late``: a message is acknowledged when ``run_job`` returns, not when a
  worker takes it, so a worker that dies mid-job leaves it unacknowledged.
- ``task_reject_on_worker_lost``: a prefork child killed mid-job (OOM, SIGKILL) has its
  message requeued at once instead of acknowledged as failed.
- ``worker_prefetch_multiplier = 1``: a process reserves one job at a time; a job waits in
  the broker, where an idle worker can take it, not behind a long one in a busy process.
- No result backend: the ``jobs`` table is the source of truth for state and results.
- The lease in ``jobs.worker`` (see ``core.db.control``) makes a second delivery of the
  same job a no-op, so at-least-once delivery runs each job once at a time.

Priorities: three queues, ``ponder.high``, ``ponder.default``, ``ponder.low``, consumed in
that order. On Redis, kombu's ``queue_order_strategy="priority"`` makes each BRPOP list
them in that order, so a waiting high job is always taken first (kombu's default,
round-robin, rotates the order after every message). Separate queues rather than Redis
priority steps on one queue: they also let an operator dedicate workers to a class
(``ponder worker --queues high``), and the embedded broker supports them too (there,
polled round-robin: fair, not strict).

Embedded broker: kombu's filesystem transport in ``data_dir/broker``. It needs no server
and no database (the SQLAlchemy transport would take SQLite's single write lock on every
poll, competing with the job store). acks_late holds there as on any kombu virtual
transport: an unacknowledged message is restored when its worker shuts down or when a
prefork child dies; only a crash of the whole worker loses it, and the reaper
re-enqueues such jobs from the database.

Time limits: a run's soft limit is the budget's ``max_seconds`` plus a grace, capped by
``worker.time_limit_s`` (also the limit of jobs without ``max_seconds``); the hard limit
follows ``hard_limit_extra_s`` later. The worker enforces the soft limit itself from the
job row (``core.cancel.JobMonitor``); Celery's limits, sent with each message when the
enqueuer knows the budget, are the backstop for a process that stops responding.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Exchange, Queue
from kombu.transport import TRANSPORT_ALIASES

from core.jobs import PRIORITIES
from core.settings import Settings, get_settings

# ``filesystem://`` (the embedded broker) gets kombu's transport with atomic writes and
# takes (workers/fs_broker.py); every process that publishes or consumes imports this.
TRANSPORT_ALIASES["filesystem"] = "workers.fs_broker:Transport"

QUEUE_PREFIX = "ponder"
TASK_RUN_JOB = "ponder.run_job"


def queue_name(priority: str) -> str:
    """``ponder.high`` | ``ponder.default`` | ``ponder.low``."""
    if priority not in PRIORITIES:
        raise ValueError(f"unknown priority {priority!r}; expected one of {PRIORITIES}")
    return f"{QUEUE_PREFIX}.{priority}"


def is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://", "redis+socket://"))


def transport_options(settings: Settings) -> dict[str, Any]:
    url = settings.resolved_broker_url()
    worker = settings.worker
    if is_redis(url):
        options: dict[str, Any] = {
            "queue_order_strategy": "priority",
            # An unacknowledged message is redelivered after this long. Longer than any
            # run may last: otherwise a live job's message would be handed out again (the
            # lease would stop the second run, but at the cost of a wasted delivery).
            "visibility_timeout": int(worker.time_limit_s + worker.hard_limit_extra_s + 300),
        }
        if worker.key_prefix:
            options["global_keyprefix"] = worker.key_prefix
        return options
    if url.startswith("filesystem://"):
        folder = str(settings.broker_dir())
        return {
            "data_folder_in": folder,
            "data_folder_out": folder,
            # Same filesystem as the queue, so taking a message is an atomic rename: of
            # two workers polling one folder, exactly one gets each file.
            "processed_folder": str(settings.broker_dir() / "taken"),
            # Exchange bindings; the transport's default is "control" in the cwd.
            "control_folder": str(settings.broker_dir() / "control"),
            "store_processed": False,  # workers.fs_broker deletes what it took
            "polling_interval": worker.broker_poll_s,
        }
    return {}


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings derived from Ponder's; pure (no connection, no files)."""
    url = settings.resolved_broker_url()
    soft, hard = settings.worker.time_limits(None)
    redis = is_redis(url)
    return {
        "broker_url": url,
        "broker_transport_options": transport_options(settings),
        "broker_connection_retry_on_startup": True,
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "task_queues": [
            Queue(queue_name(p), Exchange(queue_name(p), type="direct"), routing_key=queue_name(p))
            for p in PRIORITIES
        ],
        "task_default_queue": queue_name("default"),
        "task_create_missing_queues": False,
        "task_soft_time_limit": soft,
        "task_time_limit": hard,
        "task_track_started": False,
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        # Remote control and events use broadcast exchanges, which only Redis serves well;
        # on the polled filesystem broker they would add a folder scan per poll.
        "worker_enable_remote_control": redis,
    }


def create_app(settings: Settings | None = None) -> Celery:
    celery = Celery("ponder", include=["workers.tasks"])
    celery.conf.update(celery_config(settings or get_settings()))
    return celery


app = create_app()
_settings: Settings | None = None


def configure(settings: Settings) -> Celery:
    """Point the module's app at another configuration (tests, ``ponder serve``).

    Open broker connections are closed, so the next publish uses the new broker.
    """
    global _settings
    # Forget the cached connection and producer pools, as Celery itself does after a fork:
    # both were built for the previous broker URL and transport options. (Not closed:
    # kombu keeps pools per connection parameters and hands them out again.)
    app._pool = None  # type: ignore[attr-defined]
    amqp = app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None
    app.conf.update(celery_config(settings))
    _settings = settings
    return app


def current_settings() -> Settings:
    """The settings the app was last configured from."""
    return _settings if _settings is not None else get_settings()


_made_dirs: set[Path] = set()
_dirs_lock = threading.Lock()


def ensure_broker_dir(settings: Settings) -> None:
    """Create the embedded broker's folders (the filesystem transport only uses them).

    Done once per process, by the first publisher or the worker, never on import.
    """
    if not settings.resolved_broker_url().startswith("filesystem://"):
        return
    folder = settings.broker_dir()
    if folder in _made_dirs:
        return
    with _dirs_lock:
        (folder / "taken").mkdir(parents=True, exist_ok=True)
        (folder / "control").mkdir(exist_ok=True)
        _made_dirs.add(folder)
