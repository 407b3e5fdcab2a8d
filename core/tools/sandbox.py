"""``PythonSandbox``: run untrusted Python in a fresh bubblewrap sandbox, one process per run.

Each run gets no network (not even loopback), a read-only ``/usr`` and nothing else of the
host's files, a private size-capped tmpfs as ``/tmp`` and working directory, an empty
environment, its own PID namespace, and limits on CPU time, address space, file size,
process count, output and wall time. The program runs on the system ``/usr/bin/python3``
with the standard library (and whatever Debian ``python3-*`` packages the host has).
The threat model and the deployment requirements are in ``docs/sandbox.md``.

If bubblewrap is missing or cannot create its namespaces, constructing a ``PythonSandbox``
raises ``SandboxUnavailable`` with one sentence saying what is needed: nothing is ever
run unsandboxed.

Example::

    sandbox = PythonSandbox(SandboxLimits(cpu_seconds=2))
    result = await sandbox.run("print(sum(range(10)))")
    assert result.stdout == "45\\n" and result.exit_code == 0
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from core.errors import ConfigError
from core.tools.bwrap import BWRAP_ENV, RunAs, probe, sandbox_argv

KilledReason = Literal["wall_limit", "cpu_limit", "memory_limit", "output_limit", "signal"]

# After a kill, how long to wait for the pipes to close and the process to be reaped.
KILL_GRACE_S = 5.0
READ_CHUNK = 64 * 1024


class SandboxUnavailable(ConfigError):
    """bubblewrap is missing or cannot sandbox here; the executor refuses to start."""

    code = "sandbox_unavailable"
    status = 503


class SandboxLimits(BaseModel):
    """What one sandboxed run may use. Shaped to nest in ``Settings`` as ``sandbox``."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    cpu_seconds: int = Field(default=5, ge=1)
    """CPU seconds per process (``RLIMIT_CPU``; SIGXCPU, then SIGKILL one second later)."""
    wall_seconds: float = Field(default=10.0, gt=0)
    """Wall time of the whole run; past it every process of the run is killed."""
    memory_bytes: int = Field(default=512 * 2**20, ge=64 * 2**20)
    """Address space per process (``RLIMIT_AS``): Python raises ``MemoryError`` past it."""
    output_bytes: int = Field(default=256 * 2**10, ge=1)
    """Bytes kept of stdout and of stderr each; more output kills the run (truncated)."""
    max_processes: int = Field(default=16, ge=1)
    """Processes and threads of the run, the program included (``RLIMIT_NPROC``)."""
    file_bytes: int = Field(default=16 * 2**20, ge=0)
    """Largest file the program may write (``RLIMIT_FSIZE``)."""
    tmp_bytes: int = Field(default=64 * 2**20, ge=2**20)
    """Size of the private tmpfs at ``/tmp`` (held in the host's memory while the run lasts)."""


class ExecutionResult(BaseModel):
    """What a sandboxed run produced and how it ended."""

    model_config = ConfigDict(frozen=True)

    stdout: str
    stderr: str
    exit_code: int = Field(
        description="The program's exit status; -N when killed by signal N (bubblewrap "
        "reports a signal as 128+N, so a program's own exit status above 128 reads so too)."
    )
    timed_out: bool = Field(description="Killed by the CPU or the wall-time limit.")
    truncated: bool = Field(description="stdout or stderr went past output_bytes.")
    killed_reason: KilledReason | None = None
    duration_ms: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.killed_reason is None


class PythonSandbox:
    """Runs Python programs in bubblewrap, one fresh sandbox per ``run``.

    Args:
        limits: per-run limits; the defaults suit short generated programs.
        bwrap: path of the ``bwrap`` binary (default: found on ``PATH``).

    Raises:
        SandboxUnavailable: bubblewrap is missing or cannot create namespaces here (the
            check runs one trivial sandboxed command, once per process).
    """

    def __init__(self, limits: SandboxLimits | None = None, *, bwrap: str | None = None) -> None:
        self.limits = limits or SandboxLimits()
        self._run_as = RunAs.for_current_user()
        refusal = probe(bwrap, self._run_as)
        if refusal is not None:
            raise SandboxUnavailable(refusal)
        self._bwrap = bwrap or "bwrap"

    async def run(
        self, code: str, stdin: str = "", *, wall_seconds: float | None = None
    ) -> ExecutionResult:
        """Run ``code`` as ``/sandbox/main.py`` with ``stdin``; never raises for the program's
        sake (errors, kills and limits are in the result). ``wall_seconds`` shortens the
        wall limit for this run (a job's deadline that comes first)."""
        limits = self.limits
        program_fd = os.memfd_create("ponder-sandbox-program", os.MFD_CLOEXEC)
        try:
            _write_all(program_fd, code.encode("utf-8", "surrogateescape"))
            os.lseek(program_fd, 0, os.SEEK_SET)
            argv = sandbox_argv(
                self._bwrap,
                program_fd=program_fd,
                cpu_seconds=limits.cpu_seconds,
                memory_bytes=limits.memory_bytes,
                file_bytes=limits.file_bytes,
                tmp_bytes=limits.tmp_bytes,
                max_processes=limits.max_processes,
            )
            started = time.perf_counter()
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=BWRAP_ENV,
                cwd="/",
                start_new_session=True,  # bubblewrap leads its own group: one killpg
                pass_fds=(program_fd,),
                user=self._run_as.uid,
                group=self._run_as.gid,
                extra_groups=self._run_as.extra_groups,
            )
        finally:
            os.close(program_fd)
        run = _Run(process, limits.output_bytes)
        wall = min(limits.wall_seconds, wall_seconds or limits.wall_seconds)
        await run.wait(stdin.encode("utf-8", "surrogateescape"), wall)
        return run.result(duration_ms=(time.perf_counter() - started) * 1000)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Run:
    """One running sandbox: its pipes, its limits, and why it was stopped."""

    def __init__(self, process: asyncio.subprocess.Process, output_bytes: int) -> None:
        self.process = process
        self.output_bytes = output_bytes
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.truncated = False
        self.killed_reason: KilledReason | None = None

    def kill(self, reason: KilledReason) -> None:
        """Kill the run: bubblewrap's process group, whose death takes its PID namespace —
        every process the program started — with it (``--die-with-parent``)."""
        if self.killed_reason is None:
            self.killed_reason = reason
        self.kill_if_running()

    def kill_if_running(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)

    async def wait(self, stdin: bytes, wall_seconds: float) -> None:
        assert self.process.stdout and self.process.stderr
        tasks = [
            asyncio.create_task(self._pump(self.process.stdout, self.stdout)),
            asyncio.create_task(self._pump(self.process.stderr, self.stderr)),
            asyncio.create_task(self._feed(stdin)),
            asyncio.create_task(self.process.wait()),
        ]
        try:
            _, pending = await asyncio.wait(tasks, timeout=wall_seconds)
            if pending:
                self.kill("wall_limit")
                _, pending = await asyncio.wait(pending, timeout=KILL_GRACE_S)
        finally:
            self.kill_if_running()  # a no-op unless the caller cancelled us mid-run
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # A pump cancelled before its EOF (a cancelled run, a grace period run out)
            # leaves its pipe open until garbage collection, which then warns in whatever
            # runs next. asyncio's Process has no public close; its transport's close is
            # idempotent and closes every pipe now.
            transport = getattr(self.process, "_transport", None)
            if transport is not None:
                transport.close()

    async def _pump(self, stream: asyncio.StreamReader, sink: bytearray) -> None:
        # Reads to the end even past the cap (discarding): a pipe left unread stays paused,
        # never sees its EOF, and asyncio's ``Process.wait`` waits for every pipe to close.
        while chunk := await stream.read(READ_CHUNK):
            room = self.output_bytes - len(sink)
            if len(chunk) > room:
                sink += chunk[: max(room, 0)]
                self.truncated = True
                self.kill("output_limit")
            else:
                sink += chunk

    async def _feed(self, stdin: bytes) -> None:
        writer = self.process.stdin
        assert writer is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if stdin:
                writer.write(stdin)
                await writer.drain()
            writer.close()
            await writer.wait_closed()

    def result(self, *, duration_ms: float) -> ExecutionResult:
        code = self.process.returncode
        if code is None:  # not reaped within the grace period: report it as our kill
            code = -signal.SIGKILL
        elif code > 128:  # bubblewrap's "killed by signal N"
            code = 128 - code
        stderr = self.stderr.decode("utf-8", "replace")
        reason = self.killed_reason
        if reason is None and code == -signal.SIGXCPU:
            reason = "cpu_limit"
        elif reason is None and code != 0 and _ends_in_memory_error(stderr):
            reason = "memory_limit"
        elif reason is None and code < 0:
            reason = "signal"
        return ExecutionResult(
            stdout=self.stdout.decode("utf-8", "replace"),
            stderr=stderr,
            exit_code=code,
            timed_out=reason in ("cpu_limit", "wall_limit"),
            truncated=self.truncated,
            killed_reason=reason,
            duration_ms=round(duration_ms, 1),
        )


def _ends_in_memory_error(stderr: str) -> bool:
    """Python's traceback ends with ``MemoryError`` when ``RLIMIT_AS`` refused memory."""
    lines = stderr.strip().splitlines()
    return bool(lines) and lines[-1].startswith("MemoryError")
