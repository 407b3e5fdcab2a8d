"""The Python sandbox against what a malicious program would try (docs/sandbox.md).

Real bubblewrap, real programs. Every escape must fail, and the same sandbox must then
serve the next run. Under CI=true a machine where bubblewrap cannot sandbox fails these
tests; elsewhere they skip, saying why.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.tools import ExecutionResult, PythonSandbox, SandboxLimits, SandboxUnavailable

REPO = Path(__file__).resolve().parents[2]
LIMITS = SandboxLimits(
    cpu_seconds=1,
    wall_seconds=3,
    memory_bytes=256 * 2**20,
    output_bytes=64 * 2**10,
    max_processes=16,
    file_bytes=4 * 2**20,
    tmp_bytes=8 * 2**20,
)
PROGRAM_CMDLINE = b"/usr/bin/python3\0-I\0-B\0/sandbox/main.py\0"


@pytest.fixture(scope="module")
def sandbox() -> PythonSandbox:
    try:
        return PythonSandbox(LIMITS)
    except SandboxUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{exc.message} (CI=true: the sandbox tests must run)")
        pytest.skip(exc.message)


async def assert_still_serves(sandbox: PythonSandbox) -> None:
    result = await sandbox.run("print(6 * 7)")
    assert (result.stdout, result.exit_code, result.killed_reason) == ("42\n", 0, None)


def sandbox_processes() -> list[int]:
    """Host PIDs still running a sandboxed program."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes() == PROGRAM_CMDLINE:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


async def test_a_program_prints_the_right_answer(sandbox: PythonSandbox) -> None:
    code = (
        "import sys\n"
        "n = int(sys.stdin.read())\n"
        "primes = [p for p in range(2, n) if all(p % d for d in range(2, int(p**0.5) + 1))]\n"
        "print(sum(primes))\n"
    )
    result = await sandbox.run(code, stdin="1000")
    assert result.stdout == "76127\n"
    assert result.exit_code == 0 and result.ok
    assert (result.timed_out, result.truncated, result.killed_reason) == (False, False, None)


async def test_an_error_comes_back_as_a_traceback(sandbox: PythonSandbox) -> None:
    result = await sandbox.run("x = 1\nprint(x / 0)\n")
    assert result.exit_code == 1 and not result.ok
    assert 'File "/sandbox/main.py", line 2' in result.stderr
    assert result.stderr.rstrip().endswith("ZeroDivisionError: division by zero")
    assert result.killed_reason is None


async def test_the_environment_holds_no_secrets(
    sandbox: PythonSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PONDER_FAKE_SECRET", "s3cret-ponder-value")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake-key-for-the-test")
    code = (
        "import os\n"
        "print(dict(os.environ))\n"
        "for pid in os.listdir('/proc'):\n"
        "    if pid.isdigit():\n"
        "        print(pid, open(f'/proc/{pid}/environ', 'rb').read())\n"
    )
    result = await sandbox.run(code)
    assert result.exit_code == 0, result.stderr
    assert "1 b'PATH=" in result.stdout  # bubblewrap's own environment was read, and is bare
    for leak in ("s3cret-ponder-value", "sk-fake-key", "PONDER_", "OPENAI"):
        assert leak not in result.stdout
    await assert_still_serves(sandbox)


async def test_the_data_dir_the_repo_and_home_are_out_of_reach(
    sandbox: PythonSandbox, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "ponder.db").write_text("database-secret-bytes")
    targets = [
        str(data_dir / "ponder.db"),
        str(data_dir),
        str(REPO / "pyproject.toml"),
        str(REPO),
        str(Path.home()),
        "/etc/passwd",
        "/work",
        "/proc/1/root/work",
    ]
    code = (
        "import json, os, sys\n"
        "seen = {}\n"
        "for path in json.load(sys.stdin):\n"
        "    try:\n"
        "        seen[path] = os.listdir(path) if os.path.isdir(path) else open(path).read()\n"
        "    except OSError as exc:\n"
        "        seen[path] = type(exc).__name__\n"
        "print(json.dumps(seen))\n"
    )
    result = await sandbox.run(code, stdin=json.dumps(targets))
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == dict.fromkeys(targets, "FileNotFoundError")
    assert "database-secret-bytes" not in result.stdout
    # /usr is bound read-only, but not the worker's own installs under /usr/local.
    hidden = await sandbox.run("import os\nprint(os.listdir('/usr/local'))\n")
    assert hidden.stdout == "[]\n"
    await assert_still_serves(sandbox)


@pytest.fixture
async def listening_port() -> AsyncIterator[int]:
    """A TCP server on the host's loopback that the host itself can reach."""
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    yield port
    server.close()
    await server.wait_closed()


async def test_no_network_not_even_loopback(sandbox: PythonSandbox, listening_port: int) -> None:
    targets = [["127.0.0.1", 5432], ["127.0.0.1", 6379], ["127.0.0.1", listening_port]]
    targets += [["::1", listening_port], ["10.0.0.1", 80], ["1.1.1.1", 53]]
    code = (
        "import json, socket, sys\n"
        "for host, port in json.load(sys.stdin):\n"
        "    try:\n"
        "        socket.create_connection((host, port), timeout=2).close()\n"
        "        print(host, port, 'CONNECTED')\n"
        "    except OSError as exc:\n"
        "        print(host, port, type(exc).__name__)\n"
        "try:\n"
        "    socket.getaddrinfo('pypi.org', 443)\n"
        "    print('dns RESOLVED')\n"
        "except OSError as exc:\n"
        "    print('dns', type(exc).__name__)\n"
    )
    result = await sandbox.run(code, stdin=json.dumps(targets))
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(targets) + 1
    assert not [line for line in lines if "CONNECTED" in line or "RESOLVED" in line]
    await assert_still_serves(sandbox)


async def test_a_fork_bomb_is_bounded_and_leaves_nothing_behind(sandbox: PythonSandbox) -> None:
    code = (
        "import os, time\n"
        "children = 0\n"
        "try:\n"
        "    while True:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(3600)\n"
        "            os._exit(0)\n"
        "        children += 1\n"
        "except OSError as exc:\n"
        "    print('refused after', children, type(exc).__name__, flush=True)\n"
        "while True:\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        pass\n"
    )
    result = await sandbox.run(code)
    words = result.stdout.split()
    assert words[:2] == ["refused", "after"] and words[3] == "BlockingIOError", result
    assert int(words[2]) < LIMITS.max_processes
    assert result.timed_out and result.killed_reason in ("wall_limit", "cpu_limit")
    for _ in range(100):  # the PID namespace is torn down right after the kill
        if not sandbox_processes():
            break
        await asyncio.sleep(0.1)
    assert sandbox_processes() == []
    await assert_still_serves(sandbox)


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
async def test_huge_output_is_truncated_and_flagged(sandbox: PythonSandbox, stream: str) -> None:
    result = await sandbox.run(f"import sys\nwhile True:\n    sys.{stream}.write('x' * 65536)\n")
    flooded: str = getattr(result, stream)
    assert len(flooded) == LIMITS.output_bytes and set(flooded) == {"x"}
    assert result.truncated and result.killed_reason == "output_limit"
    assert not result.timed_out
    await assert_still_serves(sandbox)


async def test_an_infinite_loop_hits_the_cpu_limit(sandbox: PythonSandbox) -> None:
    # A wall limit far above the CPU limit, so that a busy machine cannot make it the wall's.
    patient = PythonSandbox(LIMITS.model_copy(update={"wall_seconds": 60}))
    result = await patient.run("print('start', flush=True)\nwhile True:\n    pass\n")
    assert result.stdout == "start\n"
    assert result.timed_out and result.killed_reason == "cpu_limit"
    assert result.exit_code == -24  # SIGXCPU
    await assert_still_serves(sandbox)


async def test_a_sleeping_program_hits_the_wall_limit(sandbox: PythonSandbox) -> None:
    result = await sandbox.run("import time\nprint('start', flush=True)\ntime.sleep(3600)\n")
    assert result.stdout == "start\n"
    assert result.timed_out and result.killed_reason == "wall_limit"
    assert result.exit_code == -9
    await assert_still_serves(sandbox)


async def test_a_memory_hog_is_stopped(sandbox: PythonSandbox) -> None:
    code = "hoard = []\nwhile True:\n    hoard.append(bytearray(10**7))\n"
    result = await sandbox.run(code)
    assert result.killed_reason == "memory_limit" and result.exit_code == 1
    assert result.stderr.rstrip().endswith("MemoryError")
    assert not result.timed_out
    await assert_still_serves(sandbox)


async def test_writing_outside_the_private_tmp_fails(
    sandbox: PythonSandbox, tmp_path: Path
) -> None:
    targets = [
        "/usr/ponder-escape",
        "/usr/local/ponder-escape",
        "/bin/ponder-escape",
        "/ponder-escape",
        "/dev/ponder-escape",
        "/etc/ponder-escape",
        str(REPO / "ponder-escape"),
        str(tmp_path / "ponder-escape"),
    ]
    code = (
        "import json, os, sys\n"
        "for path in json.load(sys.stdin) + ['/tmp/mine']:\n"
        "    try:\n"
        "        open(path, 'w').write('x')\n"
        "        print(path, 'WROTE')\n"
        "    except OSError as exc:\n"
        "        print(path, type(exc).__name__)\n"
        "for name, size in (('big', 16 * 2**20), ('a', 3 * 2**20), ('b', 3 * 2**20),\n"
        "                   ('c', 3 * 2**20)):\n"
        "    try:\n"
        "        open(f'/tmp/{name}', 'wb').write(b'x' * size)\n"
        "        print(name, 'WROTE')\n"
        "    except OSError as exc:\n"
        "        print(name, exc.strerror)\n"
        "        os.remove(f'/tmp/{name}')\n"
    )
    result = await sandbox.run(code, stdin=json.dumps(targets))
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    # One file past file_bytes (4 MiB); three files within it, but past tmp_bytes (8 MiB).
    assert lines[-5:] == [
        "/tmp/mine WROTE",
        "big File too large",
        "a WROTE",
        "b WROTE",
        "c No space left on device",
    ]
    for line in lines[:-5]:
        assert line.split()[-1] in ("OSError", "PermissionError", "FileNotFoundError"), line
    for path in targets:
        assert not Path(path).exists()

    again = await sandbox.run("import os\nprint(os.listdir('/tmp'))\n")
    assert again.stdout == "[]\n"  # every run gets a fresh tmpfs


async def test_stdin_the_program_never_reads_does_not_block_it(sandbox: PythonSandbox) -> None:
    result = await sandbox.run("print('done')", stdin="x" * 2**20)
    assert (result.stdout, result.exit_code, result.killed_reason) == ("done\n", 0, None)


async def test_runs_in_parallel_are_independent(sandbox: PythonSandbox) -> None:
    code = "import sys, time\ntime.sleep(0.2)\nprint(int(sys.stdin.read()) ** 2)\n"
    results: list[ExecutionResult] = await asyncio.gather(
        *(sandbox.run(code, stdin=str(n)) for n in range(6))
    )
    assert [r.stdout for r in results] == [f"{n * n}\n" for n in range(6)]


async def test_a_cancelled_run_kills_its_sandbox(sandbox: PythonSandbox) -> None:
    """A job cancelled mid-run (the runner cancels its task) leaves no program running."""
    task = asyncio.create_task(sandbox.run("import time\ntime.sleep(3600)\n"))
    for _ in range(100):
        if sandbox_processes():
            break
        await asyncio.sleep(0.05)
    assert sandbox_processes()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.monotonic() + 10
    while sandbox_processes() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert sandbox_processes() == []
