"""Starting workers: ``ponder worker`` and the embedded ``ponder serve``.

Both start the embedded models at most once per machine-level command, when no pools are
configured, and hand their endpoints to every process they start through
``PONDER_POOLS__<ROLE>__*`` variables: a prefork child or the API process then reads them
as configured pools and never starts models of its own.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from core.db.engine import is_sqlite
from core.db.migrate import ensure_schema
from core.embedded.catalog import CATALOG, INSTALL_HINT
from core.embedded.manager import EmbeddedModels
from core.errors import ConfigError, InvalidInput
from core.jobs import PRIORITIES
from core.settings import PoolSettings, Settings, pool_env
from workers import metrics as worker_metrics

log = logging.getLogger(__name__)

_STOP_GRACE_S = 10.0


def queue_names(queues: Sequence[str]) -> list[str]:
    """``["high", "ponder.low"]`` -> ``["ponder.high", "ponder.low"]``, order kept."""
    from workers.celery_app import queue_name

    names = []
    for item in queues:
        priority = item.removeprefix("ponder.")
        if priority not in PRIORITIES:
            raise InvalidInput(
                f"unknown queue {item!r}; expected some of {', '.join(PRIORITIES)}",
                field="queues",
            )
        names.append(queue_name(priority))
    if not names:
        raise InvalidInput("no queues to consume", field="queues")
    return list(dict.fromkeys(names))


def missing_embedded(settings: Settings) -> list[str]:
    """Modules of the embedded extra (xllamacpp, the chunk packages of the configured
    roles) that cannot be imported; found without importing them (xllamacpp is heavy)."""
    names = ["xllamacpp"]
    for role in settings.embedded.roles:
        spec = CATALOG.get(role)
        names += list(spec.parts) if spec is not None else []
    return [name for name in names if importlib.util.find_spec(name) is None]


def embedded_install_hint(missing: Sequence[str]) -> str:
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    return f"missing {shown}; install it with {INSTALL_HINT}"


def _start_embedded(settings: Settings) -> tuple[EmbeddedModels | None, dict[str, PoolSettings]]:
    """The configured pools, untouched; only without any are the embedded models started."""
    if settings.pools:
        return None, dict(settings.pools)
    if not settings.embedded.enabled:
        raise ConfigError(
            "no model pools are configured and the embedded models are disabled; set "
            "PONDER_POOLS__<ROLE>__ENDPOINTS and __MODEL, or enable PONDER_EMBEDDED__ENABLED"
        )
    missing = missing_embedded(settings)
    if missing:
        raise ConfigError(
            "no model pools are configured and the embedded models are not installed "
            f"(missing {', '.join(missing[:2])}{', ...' if len(missing) > 2 else ''}): "
            "configure pools with PONDER_POOLS__<ROLE>__ENDPOINTS and "
            f"PONDER_POOLS__<ROLE>__MODEL, or install the models with {INSTALL_HINT}",
            missing=missing,
        )
    cache = settings.embedded.cache_dir or (settings.data_dir / "models")
    models = EmbeddedModels(settings.embedded, Path(cache))
    return models, models.start()


def _stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(_STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        log.warning("process %d did not stop within %g s; killing it", proc.pid, _STOP_GRACE_S)
        proc.kill()
        proc.wait()


def run_worker(
    settings: Settings,
    *,
    concurrency: int | None,
    queues: Sequence[str],
    pool: str,
    reaper: bool,
    loglevel: str,
) -> int:
    """Run a Celery worker in this process until it is told to stop (SIGTERM: warm).

    Returns the worker's exit code.
    """
    names = queue_names(queues)
    embedded, pools = _start_embedded(settings)
    reaper_proc: subprocess.Popen[bytes] | None = None
    try:
        if embedded is not None:
            # Prefork children and the reaper read their settings from the environment.
            os.environ.update(pool_env(pools))
            settings = settings.model_copy(update={"pools": pools})
        from workers.celery_app import configure, ensure_broker_dir

        app = configure(settings)
        ensure_broker_dir(settings)
        worker_metrics.serve()  # before the pool forks: children count into its files
        if reaper:
            reaper_proc = subprocess.Popen([sys.executable, "-m", "workers.reaper"])
        argv = [
            "worker",
            f"--loglevel={loglevel}",
            f"--queues={','.join(names)}",
            f"--pool={pool}",
            # A unique node name: several workers on one host must not share a mailbox.
            f"--hostname=ponder-{os.getpid()}@%h",
            # Mingle and gossip only exchange revoked-task lists and cluster events, which
            # Ponder does not use (cancellation lives in the database); skipping them
            # saves a second at start and a broadcast per worker.
            "--without-mingle",
            "--without-gossip",
        ]
        if concurrency is not None:
            argv.append(f"--concurrency={concurrency}")
        code: object = 0
        try:
            code = app.worker_main(argv)
        except SystemExit as exc:
            code = exc.code
        return code if isinstance(code, int) else 0
    finally:
        _stop(reaper_proc)
        if embedded is not None:
            embedded.stop()


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def serve_embedded(settings: Settings, *, host: str, port: int, worker_concurrency: int = 2) -> int:
    """The whole service on one machine: embedded models (unless pools are configured),
    one worker with the reaper, and the API; stops everything on Ctrl-C or SIGTERM.

    Uses the settings' database (default: a SQLite file) and broker (default: the
    filesystem broker in ``data_dir``), so nothing else needs to run.
    """
    data_dir = settings.data_dir.resolve()
    env = {**os.environ, "PONDER_DATA_DIR": str(data_dir)}
    url = settings.resolved_database_url()
    if is_sqlite(url):
        # Once, here, before two children race to create the file.
        ensure_schema(url)
    # Both, explicitly: a shell that starts `ponder serve` in the background leaves
    # SIGINT ignored, and Python then installs no KeyboardInterrupt handler of its own.
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    previous_int = signal.signal(signal.SIGINT, _raise_stop)
    embedded: EmbeddedModels | None = None
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def reload(signum: int, frame: FrameType | None) -> None:
        # The config file (PONDER_CONFIG): the API and the worker each re-read it.
        for proc in list(procs.values()):  # one C call: safe between two bytecodes
            if proc.poll() is None:
                proc.send_signal(signal.SIGHUP)

    previous_hup = signal.signal(signal.SIGHUP, reload)
    code = 0
    try:
        embedded, pools = _start_embedded(settings)
        if embedded is not None:
            env.update(pool_env(pools))
            where = ", ".join(f"{role} at {pool.endpoints[0]}" for role, pool in pools.items())
            _say(f"embedded models: {where}")
        # Own sessions: Ctrl-C reaches this process only, which stops the children in
        # order (API first, then the worker, warm, so running jobs can finish or resume).
        procs["worker"] = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--reaper",
             f"--concurrency={worker_concurrency}"],
            env=env, start_new_session=True,
        )  # fmt: skip
        procs["api"] = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.api.main:app", "--host", host,
             "--port", str(port), "--timeout-graceful-shutdown", "5"],
            env=env, start_new_session=True,
        )  # fmt: skip
        _say(f"Ponder at http://{host}:{port} (data in {data_dir}); Ctrl-C stops it")
        while True:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    _say(f"the {name} process exited with code {proc.returncode}; stopping")
                    return proc.returncode or 1
            time.sleep(0.5)
    except _Stop:
        _say("stopping")
    finally:
        # Late signals must not interrupt the orderly stop below.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            _stop(procs.get("api"))
            _stop(procs.get("worker"))
        finally:
            if embedded is not None:
                embedded.stop()
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)
            signal.signal(signal.SIGHUP, previous_hup)
    return code


def _say(message: str) -> None:
    print(f"ponder serve: {message}", file=sys.stderr, flush=True)
