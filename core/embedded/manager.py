"""Start, health-check and stop the embedded models' child process.

One child process (``python -m core.embedded.host``) hosts every configured role,
each on its own free port of 127.0.0.1. The child cannot outlive Ponder: it dies
with its parent (PR_SET_PDEATHSIG on Linux) and also exits when the stdin pipe the
manager holds closes, which happens however the parent ends. Its logs (llama.cpp is
chatty) go to ``<cache_dir>/embedded-host.log``, never to Ponder's terminal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

import core
from core.embedded.assemble import model_file
from core.embedded.catalog import CATALOG
from core.errors import EmbeddedModelError
from core.settings import EmbeddedSettings, PoolSettings

log = logging.getLogger(__name__)

LOG_NAME = "embedded-host.log"
_LOG_ROTATE_BYTES = 50 * 1024 * 1024
_STOP_GRACE_S = 5.0
_TAIL_LINES = 25


class EmbeddedModels:
    """The embedded CPU models as pools, for when no pools are configured.

    Args:
        settings: threads, slots, context, roles and start timeout.
        cache_dir: where the assembled GGUF files and the host log live; the caller
            decides it (``<data_dir>/models`` by default).

    Example::

        with EmbeddedModels(settings.embedded, settings.data_dir / "models") as models:
            pools = models.pools        # {"small": PoolSettings(...), "large": ...}
    """

    def __init__(self, settings: EmbeddedSettings, cache_dir: Path) -> None:
        self._settings = settings
        self._cache_dir = cache_dir
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self.pools: dict[str, PoolSettings] = {}

    @property
    def log_path(self) -> Path:
        return self._cache_dir.resolve() / LOG_NAME

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> dict[str, PoolSettings]:
        """Assemble and verify the models, start the child and wait until each is healthy.

        Returns:
            role -> ``PoolSettings(kind="llamacpp", ...)`` pointing at the child.

        Raises:
            EmbeddedModelError: a package is missing, a hash is wrong, or the child did
                not become healthy within ``start_timeout_s`` (the message carries the
                tail of the child's log).
        """
        if self._proc is not None:
            return dict(self.pools)
        roles: list[str] = list(dict.fromkeys(self._settings.roles))
        if not self._settings.enabled or not roles:
            return {}
        paths = {role: model_file(role, self._cache_dir) for role in roles}
        # The timeout covers the child only: first assembly is disk-bound and bounded.
        deadline = time.monotonic() + self._settings.start_timeout_s
        self._proc = self._spawn(paths)
        try:
            urls = self._wait_ready(self._proc, deadline)
            _wait_healthy(urls, deadline)
        except BaseException as exc:
            self.stop()
            if isinstance(exc, EmbeddedModelError):
                raise EmbeddedModelError(f"{exc.message}\n{self._log_tail()}") from exc
            raise
        self.pools = {
            role: PoolSettings(
                kind="llamacpp",
                endpoints=[url],
                model=CATALOG[role].name,
                max_n=self._settings.slots,
                # Past its slots llama.cpp queues requests where nobody can see them;
                # queueing in the client keeps latency and fairness accountable.
                max_concurrency=self._settings.slots,
            )
            for role, url in urls.items()
        }
        log.info(
            "embedded models ready (pid %d): %s",
            self._proc.pid,
            ", ".join(f"{role} at {url}" for role, url in urls.items()),
        )
        return dict(self.pools)

    def stop(self) -> None:
        """Terminate the child, kill it after a grace period. Safe to call twice."""
        proc, self._proc = self._proc, None
        self.pools = {}
        if proc is None:
            return
        # Closing stdin alone would do; the signal makes it prompt even if a read hangs.
        _close(proc.stdin)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                log.warning("embedded model host %d ignored SIGTERM; killing it", proc.pid)
                proc.kill()
                proc.wait()
        _close(proc.stdout)

    def __enter__(self) -> EmbeddedModels:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _spawn(self, paths: dict[str, Path]) -> subprocess.Popen[bytes]:
        settings = self._settings
        cmd = [
            sys.executable, "-m", "core.embedded.host",
            "--watch-stdin",
            "--parent-pid", str(os.getpid()),
            "--threads", str(settings.threads),
            "--slots", str(settings.slots),
            "--context", str(settings.context),
        ]  # fmt: skip
        for role, path in paths.items():
            cmd += ["--model", f"{role}={path.resolve()}"]
        env = dict(os.environ)
        # The child must import this very ``core`` even when Ponder is not installed.
        root = str(Path(core.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        log_handle = self._open_log(cmd)

        def popen() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_handle,
                env=env,
                # Keep the terminal's Ctrl-C for Ponder: it decides when the models stop.
                start_new_session=True,
            )

        try:
            return _spawner().submit(popen).result()
        finally:
            log_handle.close()

    def _open_log(self, cmd: list[str]) -> IO[bytes]:
        self._cache_dir.mkdir(parents=True, exist_ok=True)
        path = self.log_path
        if path.exists() and path.stat().st_size > _LOG_ROTATE_BYTES:
            path.replace(path.with_name(path.name + ".1"))
        handle = path.open("ab")
        handle.write(f"\n==== {time.strftime('%F %T')} {' '.join(cmd)}\n".encode())
        handle.flush()
        self._log_offset = handle.tell()
        return handle

    def _wait_ready(self, proc: subprocess.Popen[bytes], deadline: float) -> dict[str, str]:
        assert proc.stdout is not None
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EmbeddedModelError(
                    f"the embedded models did not start within "
                    f"{self._settings.start_timeout_s:g} s (PONDER_EMBEDDED__START_TIMEOUT_S); "
                    f"see {self.log_path}"
                )
            readable, _, _ = select.select([proc.stdout], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                code = proc.wait()
                raise EmbeddedModelError(
                    f"the embedded model host exited with code {code} before it was ready; "
                    f"see {self.log_path}. If a model file is damaged, delete it and its "
                    f".verified.json stamp from {self._cache_dir} and retry."
                )
            line += chunk
        urls = json.loads(line)
        if not isinstance(urls, dict) or set(urls) != set(self._settings.roles):
            raise EmbeddedModelError(f"the embedded model host announced {line!r}")
        return {str(role): str(url) for role, url in urls.items()}

    def _log_tail(self) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._log_offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        lines = text.splitlines()[-_TAIL_LINES:]
        return "last lines of the host log:\n" + "\n".join(lines)


_SPAWNER: ThreadPoolExecutor | None = None
_SPAWNER_LOCK = threading.Lock()


def _spawner() -> ThreadPoolExecutor:
    """One thread that lives as long as the process and forks every model host.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not the
    process: a host started from a short-lived thread (``asyncio.to_thread`` once its
    executor shuts down, a request handler) would be killed with that thread.
    """
    global _SPAWNER
    with _SPAWNER_LOCK:
        if _SPAWNER is None:
            _SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedded-spawner")
        return _SPAWNER


def _wait_healthy(urls: dict[str, str], deadline: float) -> None:
    with httpx.Client(timeout=2.0) as http:
        for role, url in urls.items():
            while True:
                try:
                    if http.get(f"{url}/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise EmbeddedModelError(
                        f"the embedded {role!r} model at {url} never reported healthy"
                    )
                time.sleep(0.1)


def _close(stream: IO[bytes] | None) -> None:
    if stream is not None:
        with contextlib.suppress(OSError):
            stream.close()
