"""A worker's own ``/metrics``: what its processes counted (``core.metrics``), on
``PONDER_METRICS_WORKER_PORT``.

A Celery worker is a parent and its prefork children, and the children run the jobs. So
the parent switches ``prometheus_client`` to its multiprocess mode before any child
exists: every process then keeps its counts in a file of its own
(``PROMETHEUS_MULTIPROC_DIR``, a fresh directory per worker unless the operator names
one), and the parent's exporter adds them up at each scrape. Counts of a child that
exited stay in its file, so a recycled child never makes a counter go back.

The directory is private to the worker: two workers on one host (or two containers)
each serve their own port, and Prometheus scrapes every worker (docs/observability.md).
Figures every process shares — queue depth, jobs in flight, breaker states — are the
database's, served by the API's ``/metrics``.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from pathlib import Path

from prometheus_client import CollectorRegistry, multiprocess, start_http_server, values
from pydantic import ValidationError

from core.errors import ConfigError
from core.metrics import MetricsSettings

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def use_multiprocess_files() -> Path:
    """Count in per-process files from now on, in this process and every child it forks.

    Call before any series exists (before the pool forks). Returns the directory.
    """
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        folder = Path(given)
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = Path(tempfile.mkdtemp(prefix="ponder-metrics-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        os.environ[MULTIPROC_ENV] = str(folder)
    # prometheus_client picks its value class when it is first imported; a series made
    # after this line (every one: they are labelled, made on first use) is file-backed.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return folder


def serve(settings: MetricsSettings | None = None) -> int | None:
    """Export this worker's metrics on ``PONDER_METRICS_WORKER_PORT`` (if set).

    Returns the port, or None when the operator asked for none.
    """
    if settings is None:
        try:
            settings = MetricsSettings()
        except ValidationError as exc:
            raise ConfigError(f"bad PONDER_METRICS_* setting: {_first(exc)}") from exc
    if settings.worker_port is None:
        return None
    folder = use_multiprocess_files()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(folder))  # type: ignore[no-untyped-call]
    try:
        start_http_server(settings.worker_port, addr=settings.worker_host, registry=registry)
    except OSError as exc:
        raise ConfigError(
            f"PONDER_METRICS_WORKER_PORT={settings.worker_port}: cannot listen on "
            f"{settings.worker_host}:{settings.worker_port} ({exc.strerror or exc}); give "
            "each worker on one host a port of its own",
            field="PONDER_METRICS_WORKER_PORT",
        ) from exc
    log.info("worker metrics on http://%s:%d/metrics", settings.worker_host, settings.worker_port)
    return settings.worker_port


def _first(exc: ValidationError) -> str:
    error = exc.errors()[0]
    name = "PONDER_METRICS_" + "_".join(str(part) for part in error["loc"]).upper()
    return f"{name}: {error['msg']}"
