"""Operator-configured MCP tools (``core.tools.mcp``) against a real MCP server.

The server is ``tests/fixtures/mcp_server.py`` on the official SDK, started by the tool
itself over stdio, or by the test in a subprocess over streamable HTTP. Its log says how
many servers were started and which process to kill. No mocks.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict

from core.db import repo
from core.errors import ConfigError
from core.jobs import create_replay, submit_job
from core.runtime import Runtime
from core.settings import ToolSettings
from core.simulator.server import Simulator
from core.tools.mcp import INSTALL_HINT, PERMISSIVE_PARAMETERS, McpTool, ToolUnavailable
from strategies.protocol import Context, StrategyResult, tool_field
from strategies.registry import STRATEGIES, Strategy
from tests.fixtures.processes import free_port, wait_healthy
from tests.fixtures.runtime import simulator_settings

SERVER = Path(__file__).resolve().parents[1] / "fixtures" / "mcp_server.py"


def stdio(log: Path, **config: object) -> ToolSettings:
    command = [sys.executable, str(SERVER), "--log", str(log)]
    return ToolSettings.model_validate({"command": command, "timeout_s": 10, **config})


def events(log: Path, kind: str) -> list[int]:
    """Process ids of the server log's ``kind`` lines (``start``, ``slow``), in order."""
    if not log.exists():
        return []
    lines = [line.split() for line in log.read_text().splitlines()]
    return [int(pid) for event, pid in lines if event == kind]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"


async def until(condition: object, what: str, timeout: float = 10.0) -> None:
    """Wait for a condition the server reports in its log (not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not callable(condition) or not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        await asyncio.sleep(0.02)


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "server.log"


@pytest.fixture
async def add(log: Path) -> AsyncIterator[McpTool]:
    tool = McpTool("add", stdio(log))
    try:
        yield tool
    finally:
        await tool.aclose()


async def test_one_stdio_server_serves_every_call_and_lists_the_schema(
    add: McpTool, log: Path
) -> None:
    # Before the server is asked, the model would see a permissive schema.
    assert add.parameters == PERMISSIVE_PARAMETERS
    assert events(log, "start") == []  # lazy: nothing starts before a call

    result = await add.execute({"a": 2, "b": 3}, timeout_s=5)
    assert (result.output, result.error) == ("5", None)
    assert result.details["structured"] == {"result": 5}

    await add.prepare()
    assert add.description == "Add two integers."
    assert add.parameters["required"] == ["a", "b"]
    assert add.parameters["properties"]["a"]["type"] == "integer"

    parallel = await asyncio.gather(*(add.execute({"a": i, "b": 1}, None) for i in range(6)))
    assert [r.output for r in parallel] == [str(i + 1) for i in range(6)]
    bad = await add.execute({"a": "x"}, None)  # the server validates; the call fails
    assert bad.error is not None and "validation error" in bad.error and bad.output == ""

    (pid,) = events(log, "start")
    assert add.sessions_opened == 1
    await add.aclose()
    assert not alive(pid)  # aclose stops the child process


async def test_a_configured_description_and_server_side_name_win(log: Path) -> None:
    tool = McpTool("city_facts", stdio(log, tool="lookup", description="Facts about cities."))
    try:
        await tool.prepare()
        assert tool.description == "Facts about cities."
        assert tool.parameters["required"] == ["city"]
        result = await tool.execute({"city": "Paris"}, None)
        assert result.output.startswith("Paris is the capital of France")
    finally:
        await tool.aclose()

    missing = McpTool("search", stdio(log))
    try:
        with pytest.raises(ConfigError) as raised:
            await missing.prepare()
        assert "offers no tool 'search'" in raised.value.message
        assert "add, environment, fail, lookup, slow" in raised.value.message
    finally:
        await missing.aclose()


async def test_a_stdio_server_gets_its_configured_environment_not_ponders(
    monkeypatch: pytest.MonkeyPatch, log: Path
) -> None:
    monkeypatch.setenv("PONDER_DATABASE_URL", "postgresql://ponder:s3cret@db/ponder")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-for-tools")
    tool = McpTool("environment", stdio(log, env={"FACTS_DB": "/srv/facts.db"}))
    try:
        result = await tool.execute({}, None)
    finally:
        await tool.aclose()
    names = set(result.details["structured"]["result"])
    assert "FACTS_DB" in names and "PATH" in names
    safe = {"HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER"}  # the SDK's few
    # LC_CTYPE: set by the server's own Python under the C locale (PEP 538 coercion).
    assert names <= safe | {"FACTS_DB", "LC_CTYPE"}


async def test_a_tool_error_and_a_timeout_are_results_and_the_session_lives_on(
    log: Path,
) -> None:
    fail = McpTool("fail", stdio(log))
    slow = McpTool("slow", stdio(log, timeout_s=0.3))
    try:
        failed = await fail.execute({}, None)
        assert failed.output == "" and failed.error is not None
        assert "the fixture fails on purpose" in failed.error

        # The configured limit (0.3 s) is shorter than the job's (5 s), and vice versa.
        late = await slow.execute({"seconds": 30}, timeout_s=5)
        assert late.error == "timed out after 0.3 s" and late.details["timed_out"] is True
        later = await slow.execute({"seconds": 30}, timeout_s=0.1)
        assert later.error == "timed out after 0.1 s"

        quick = await slow.execute({"seconds": 0}, None)
        assert (quick.output, quick.error) == ("slept 0.0 s", None)
        assert (fail.sessions_opened, slow.sessions_opened) == (1, 1)
        assert len(events(log, "start")) == 2
    finally:
        await fail.aclose()
        await slow.aclose()


async def test_a_server_killed_between_calls_is_restarted_once(add: McpTool, log: Path) -> None:
    assert (await add.execute({"a": 2, "b": 3}, None)).output == "5"
    (first,) = events(log, "start")
    os.kill(first, signal.SIGKILL)

    assert (await add.execute({"a": 2, "b": 3}, None)).output == "5"
    first_again, second = events(log, "start")
    assert first_again == first and second != first and alive(second)
    assert add.sessions_opened == 2


async def test_a_server_killed_during_a_call_fails_that_call_only(log: Path) -> None:
    slow = McpTool("slow", stdio(log))
    try:
        call = asyncio.create_task(slow.execute({"seconds": 30}, None))
        await until(lambda: events(log, "slow"), "the slow call reaching the server")
        (pid,) = events(log, "start")
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(ToolUnavailable) as raised:
            await call
        assert raised.value.message == (
            "MCP tool 'slow' is unavailable: its server went away during the call"
        )
        assert (raised.value.code, raised.value.status) == ("tool_unavailable", 503)
        assert events(log, "slow") == [pid]  # sent once, never re-run by a reconnect

        again = await slow.execute({"seconds": 0}, None)
        assert again.error is None and len(events(log, "start")) == 2
    finally:
        await slow.aclose()


async def test_an_unreachable_server_is_one_sentence_naming_the_tool(tmp_path: Path) -> None:
    missing = McpTool("missing", ToolSettings(command=[str(tmp_path / "no-such-server")]))
    with pytest.raises(ToolUnavailable) as raised:
        await missing.execute({}, None)
    assert raised.value.message == (
        "MCP tool 'missing' is unavailable: its server could not be reached "
        "(FileNotFoundError: No such file or directory)"
    )

    url = f"http://ponder:s3cret@127.0.0.1:{free_port()}/mcp"
    closed = McpTool("remote", ToolSettings(url=url, timeout_s=5))
    with pytest.raises(ToolUnavailable) as raised:
        await closed.execute({}, None)
    assert raised.value.message.startswith(
        "MCP tool 'remote' is unavailable: its server could not be reached ("
    )
    assert "s3cret" not in str(raised.value.to_dict()) and "127.0.0.1" not in raised.value.message


def test_without_the_sdk_the_tool_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, log: Path
) -> None:
    monkeypatch.setitem(sys.modules, "mcp", None)  # what `import mcp` meets when absent
    with pytest.raises(ConfigError) as raised:
        McpTool("add", stdio(log))
    assert INSTALL_HINT in raised.value.message


class HttpServer:
    """The fixture server over streamable HTTP, in a subprocess on a fixed free port."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.command = [sys.executable, str(SERVER), "--log", str(log)]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [*self.command, "--http-port", str(self.port)]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_healthy(self.url, self.proc, timeout=20)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def http_server(log: Path) -> Iterator[HttpServer]:
    server = HttpServer(log)
    try:
        server.start()
        yield server
    finally:
        server.kill()


async def test_streamable_http_server(http_server: HttpServer, log: Path) -> None:
    tool = McpTool("add", ToolSettings(url=http_server.url, timeout_s=5))
    try:
        await tool.prepare()
        assert tool.parameters["required"] == ["a", "b"]
        results = await asyncio.gather(*(tool.execute({"a": i, "b": 2}, None) for i in range(3)))
        assert [r.output for r in results] == ["2", "3", "4"]
        assert tool.sessions_opened == 1

        http_server.kill()
        with pytest.raises(ToolUnavailable) as raised:
            await tool.execute({"a": 1, "b": 1}, None)
        assert raised.value.message == (
            "MCP tool 'add' is unavailable: its server could not be reached (ConnectError)"
        )

        http_server.start()  # back on the same URL: the next call opens a new session
        assert (await tool.execute({"a": 1, "b": 1}, None)).output == "2"
        assert len(events(log, "start")) == 2 and tool.sessions_opened == 3
    finally:
        await tool.aclose()


class McpProbeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["mcp_probe"] = "mcp_probe"
    tool: str = tool_field(default="add", description="The MCP tool called.")


async def mcp_probe(problem: str, ctx: Context, params: McpProbeParams) -> StrategyResult:
    tool = ctx.tools[params.tool]
    # What a model would be offered: the server's own description and schema, also in a
    # strict replay that asks no server (the job's journal recorded them).
    function = tool.as_function()["function"]
    ctx.trace("offered", description=function["description"],
              arguments=sorted(function["parameters"].get("properties", {})))  # fmt: skip
    first = await tool.call({"a": 2, "b": 3})
    second = await tool.call({"a": int(first.output), "b": 10})
    ctx.trace("added", first=first.output, second=second.output)
    return StrategyResult(answer=second.output, text=f"{first.output}, then {second.output}")


async def test_a_job_calls_the_tool_through_the_journal_and_replays_without_it(
    monkeypatch: pytest.MonkeyPatch,
    simulator: Simulator,
    sqlite_database_url: str,
    tmp_path: Path,
    log: Path,
) -> None:
    monkeypatch.setitem(
        STRATEGIES, "mcp_probe", Strategy("mcp_probe", McpProbeParams, mcp_probe, "test probe")
    )
    settings = simulator_settings(simulator.url, sqlite_database_url, tmp_path)
    settings = settings.model_copy(update={"tools": {"add": stdio(log)}})
    async with Runtime(settings, roles={"small", "large"}) as rt:
        job_id = await submit_job(
            rt.sessions, rt.pools, question="add", strategy={"kind": "mcp_probe"}
        )
        outcome = await rt.runner.run(job_id)
        assert outcome.status == "succeeded", outcome.error
        assert outcome.result is not None and outcome.result["answer"] == "15"

        replay_id = await create_replay(rt.sessions, rt.pools, job_id, mode="strict")
        replay = await rt.runner.run(replay_id)
        assert replay.status == "succeeded", replay.error
        assert replay.result is not None and replay.result["answer"] == "15"

        async with rt.sessions() as session:
            live = await repo.list_spans(session, job_id)
            replayed = await repo.list_spans(session, replay_id)
        calls = [s.attributes for s in live if s.kind == "tool_call"]
        assert [(c["journal"], c["output"]) for c in calls] == [("miss", "5"), ("miss", "15")]
        hits = [s.attributes for s in replayed if s.kind == "tool_call"]
        assert [(c["journal"], c["output"]) for c in hits] == [("hit", "5"), ("hit", "15")]
        for spans in (live, replayed):
            (offered,) = [s.attributes for s in spans if s.name == "offered"]
            assert offered["description"] == "Add two integers."
            assert offered["arguments"] == ["a", "b"]
    assert len(events(log, "start")) == 1  # one server for the job; none for the replay
