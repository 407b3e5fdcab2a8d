"""The bubblewrap command line of one sandboxed Python run, and the start-up probe.

Everything that makes a run safe is in ``sandbox_argv``; ``docs/sandbox.md`` explains
each choice. Two processes inside the sandbox matter:

1. the *limiter*, ``python3 -I -S -c LIMITER cpu memory file_bytes processes``, which sets
   the rlimits on itself and ``exec``s the program — rlimits survive ``exec``, and set
   *inside* the sandbox's own user namespace, ``RLIMIT_NPROC`` counts only this run's
   processes (the kernel counts it per user namespace and uid);
2. the program, ``python3 -I -B /sandbox/main.py``, read from a memfd by bubblewrap.

The worker never runs bubblewrap as root: root is exempt from ``RLIMIT_NPROC``, so a fork
bomb would be bounded by nothing but the wall clock. A root worker drops to
``nobody:nogroup`` (65534) for the sandbox; any other user runs it as itself.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

SANDBOX_PYTHON = "/usr/bin/python3"
PROGRAM_PATH = "/sandbox/main.py"
NOBODY = 65534

# The environment of the bubblewrap process itself. Not the worker's: a sandboxed program
# can read /proc/1/environ, the environment bubblewrap was started with.
BWRAP_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
# The environment the program sees (``--clearenv`` then these).
SANDBOX_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
}

LIMITER = """\
import os, resource, sys
cpu, memory, file_bytes, processes = map(int, sys.argv[1:5])
for kind, soft, hard in (
    (resource.RLIMIT_CPU, cpu, cpu + 1),
    (resource.RLIMIT_AS, memory, memory),
    (resource.RLIMIT_FSIZE, file_bytes, file_bytes),
    (resource.RLIMIT_NPROC, processes, processes),
    (resource.RLIMIT_CORE, 0, 0),
):
    resource.setrlimit(kind, (soft, hard))
os.execv(sys.argv[5], sys.argv[5:])
"""


@dataclass(frozen=True)
class RunAs:
    """Who bubblewrap runs as, outside the sandbox (``None`` fields: the worker itself)."""

    uid: int | None
    gid: int | None

    @classmethod
    def for_current_user(cls) -> RunAs:
        if os.geteuid() == 0:
            return cls(uid=NOBODY, gid=NOBODY)
        return cls(uid=None, gid=None)

    @property
    def extra_groups(self) -> list[int] | None:
        """Supplementary groups: none at all once dropped (root's would otherwise stay)."""
        return [] if self.uid is not None else None


def sandbox_argv(
    bwrap: str,
    *,
    program_fd: int | None,
    cpu_seconds: int,
    memory_bytes: int,
    file_bytes: int,
    tmp_bytes: int,
    max_processes: int,
    probe: bool = False,
) -> list[str]:
    """The full command: bubblewrap, the limiter, then the program (or a probe line).

    Order matters to bubblewrap: mounts apply in sequence, so ``/usr/local`` is hidden after
    ``/usr`` is bound, the program file is placed before ``/`` is made read-only, and the
    remounts come last.
    """
    argv = [
        bwrap,
        "--unshare-all",  # user, ipc, pid, net (no interface but a down loopback), uts, cgroup
        "--unshare-user",  # required, not "try": the sandbox depends on its user namespace
        "--disable-userns",  # no nested user namespaces: less kernel surface
        "--hostname",
        "sandbox",
        "--die-with-parent",
        "--new-session",  # no TIOCSTI into a terminal the worker may have
        "--clearenv",
    ]
    for name, value in SANDBOX_ENV.items():
        argv += ["--setenv", name, value]
    argv += [
        "--ro-bind", "/usr", "/usr",
        "--tmpfs", "/usr/local",  # the worker's own installs (Ponder itself in images)
        "--symlink", "usr/bin", "/bin",
        "--symlink", "usr/lib", "/lib",
        "--symlink", "usr/lib64", "/lib64",
        "--proc", "/proc",
        "--dev", "/dev",
        "--size", str(tmp_bytes),
        "--tmpfs", "/tmp",
    ]  # fmt: skip
    if program_fd is not None:
        argv += ["--perms", "0444", "--ro-bind-data", str(program_fd), PROGRAM_PATH]
    argv += [
        "--remount-ro", "/usr/local",
        "--remount-ro", "/dev",
        "--remount-ro", "/",
        "--chdir", "/tmp",
        SANDBOX_PYTHON, "-I", "-S", "-c", LIMITER,
        str(cpu_seconds), str(memory_bytes), str(file_bytes), str(max_processes),
    ]  # fmt: skip
    if probe:
        argv += [SANDBOX_PYTHON, "-I", "-S", "-c", "print('ok')"]
    else:
        argv += [SANDBOX_PYTHON, "-I", "-B", PROGRAM_PATH]
    return argv


NAMESPACES_NEEDED = (
    "the kernel must let an unprivileged process create user namespaces "
    "(sysctl user.max_user_namespaces > 0, and kernel.unprivileged_userns_clone=1 where that "
    "exists) and, in a container, the runtime must allow it too (Docker: security_opt "
    "seccomp=unconfined and systempaths=unconfined, plus apparmor=unconfined where AppArmor "
    "runs; CAP_SYS_ADMIN alone does not do)"
)


@functools.cache
def probe(bwrap: str | None, run_as: RunAs) -> str | None:
    """Why the sandbox cannot run here, in one sentence; ``None`` when it can.

    Runs one trivial sandboxed command with the real command line, once per process per
    ``(bwrap, run_as)`` (cached): a failure is the machine's, not the program's.
    """
    path = bwrap or shutil.which("bwrap")
    if not path or not os.access(path, os.X_OK):
        return (
            "The Python sandbox needs bubblewrap, which is not installed: install Debian's "
            "`bubblewrap` package (apt-get install bubblewrap); Ponder never runs code "
            "unsandboxed."
        )
    if not os.access(SANDBOX_PYTHON, os.X_OK):
        return (
            f"The Python sandbox runs {SANDBOX_PYTHON}, which is missing: install Debian's "
            "`python3` package; Ponder never runs code unsandboxed."
        )
    argv = sandbox_argv(
        path,
        program_fd=None,
        cpu_seconds=10,
        memory_bytes=256 * 2**20,
        file_bytes=2**20,
        tmp_bytes=2**20,
        max_processes=8,
        probe=True,
    )
    try:
        done = subprocess.run(
            argv,
            env=BWRAP_ENV,
            cwd="/",
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            check=False,
            user=run_as.uid,
            group=run_as.gid,
            extra_groups=run_as.extra_groups,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return (
            f"bubblewrap could not be started ({exc}): {NAMESPACES_NEEDED}; Ponder never "
            "runs code unsandboxed."
        )
    if done.returncode == 0 and done.stdout.strip() == b"ok":
        return None
    said = done.stderr.decode("utf-8", "replace").strip().splitlines()
    detail = said[-1] if said else f"exit code {done.returncode}"
    # bubblewrap's own messages may carry a link (<https://deb.li/bubblewrap>), which job
    # errors would show as "<endpoint>" (URLs are stripped from what tenants read).
    detail = re.sub(r"\s*<?https?://\S+>?", "", detail)
    return (
        f"bubblewrap cannot create its sandbox here ({detail}): {NAMESPACES_NEEDED}; Ponder "
        "never runs code unsandboxed."
    )
