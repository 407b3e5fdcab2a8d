"""``McpTool``: one operator-configured tool of an MCP server, over the official ``mcp`` SDK.

The operator names the tool and its server in settings (``PONDER_TOOLS__<NAME>__*``): a
command started as a child process and spoken to over stdio, or a streamable-HTTP URL.
A request only ever names a configured tool, never a server, so there is no SSRF.

Sessions. One session per ``McpTool`` per process, opened by the first call (or
``prepare()``) and reused by every call and job after it; parallel calls share it.
The SDK's transports and ``ClientSession`` are anyio context managers whose cancel
scopes must be entered and exited by one task, so a dedicated background task owns
them (``_own``) and holds them open until ``aclose()``; callers send requests on the
session from their own tasks. If the owning task ends (an HTTP server gone) or the
connection closed (a stdio server died), the next call opens a new session.

At most once. A call is sent once. Before a call on a reused session a ping checks that
the server is still there; if it is not, the tool reconnects once and calls on the new
session. A server that dies *during* a call fails that call with ``ToolUnavailable``
rather than running it again, since a tool may have effects.

Results. Text content joined is ``ToolResult.output``; a result the server marks
``isError`` is ``ToolResult.error``; structured content goes to
``details["structured"]``; a call past its limit is ``error="timed out after N s"``. Only
a server that cannot be reached raises, with one sentence naming the configured tool
(never its URL, which may carry credentials).

Example::

    tool = McpTool("add", ToolSettings(command=["python", "-m", "my_tools"]))
    await tool.prepare()                     # optional: the server's schema for the model
    result = await tool.execute({"a": 2, "b": 3}, timeout_s=5)
    assert result.output == "5"
    await tool.aclose()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from core.errors import ConfigError, PonderError
from core.settings import ToolSettings
from strategies.protocol import ToolResult

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from mcp import ClientSession
    from mcp.types import CallToolResult

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'ponder[mcp]'"
PERMISSIVE_PARAMETERS: dict[str, Any] = {"type": "object"}
"""What a model is shown until the server has listed the tool's own schema."""
HANDSHAKE_TIMEOUT_S = 30.0
"""Longest a server may take to start and answer the handshake (at least ``timeout_s``):
a stdio server may be a cold ``npx`` or ``uvx`` start, far slower than one call."""
CONNECTION_CLOSED = -32000
"""The SDK's JSON-RPC code for a connection that closed under a request."""

T = TypeVar("T")


class ToolUnavailable(PonderError):
    """A configured tool's server cannot be reached, or went away during a call."""

    code = "tool_unavailable"
    status = 503


class _SessionLost(Exception):
    """The session's connection closed or its owning task ended."""


def _require_sdk() -> None:
    try:
        import mcp  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"MCP tools are configured (PONDER_TOOLS__*) but the mcp SDK is not installed: "
            f"{INSTALL_HINT}"
        ) from exc


@dataclass
class _Session:
    """One open session and the task that owns its transport."""

    session: ClientSession
    task: asyncio.Task[None]
    stop: asyncio.Event
    loop: asyncio.AbstractEventLoop
    fresh: bool = True
    """Nothing has been sent since the handshake: no need to ping before a call."""
    dead: bool = field(default=False)

    def usable(self, loop: asyncio.AbstractEventLoop) -> bool:
        return not self.dead and not self.task.done() and self.loop is loop

    async def close(self) -> None:
        self.dead = True
        if self.loop is not asyncio.get_running_loop():
            return  # that loop is gone; its shutdown cancelled the task and its contexts
        self.stop.set()
        with contextlib.suppress(Exception):
            await self.task


class McpTool:
    """``ToolBackend`` for one tool of an MCP server (``core.tools.backends``).

    Args:
        name: The configured name, which jobs use and a model is shown.
        config: Its ``ToolSettings``: the transport, the server-side tool name, the
            description, the per-call timeout and a stdio server's environment.
    """

    def __init__(self, name: str, config: ToolSettings) -> None:
        _require_sdk()
        self.name = name
        self.config = config
        self.tool = config.tool or name
        """The tool's name on the server."""
        self._description = config.description
        self._parameters: dict[str, Any] | None = None
        self._live: _Session | None = None
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        self.sessions_opened = 0
        """Sessions this tool has opened in this process (the first, and reconnects)."""

    @property
    def description(self) -> str:
        """The configured description, else the server's once listed (``prepare``)."""
        return self._description or f"The {self.tool!r} tool of an MCP server."

    @description.setter
    def description(self, value: str) -> None:
        self._description = value

    @property
    def parameters(self) -> dict[str, Any]:
        """The server's input schema once listed (``prepare``), else any object."""
        return self._parameters if self._parameters is not None else PERMISSIVE_PARAMETERS

    @parameters.setter
    def parameters(self, value: dict[str, Any]) -> None:
        self._parameters = value

    async def prepare(self) -> None:
        """Open the session and read the tool's description and schema from the server.

        Raises ``ToolUnavailable`` if the server cannot be reached, ``ConfigError`` if
        it offers no tool of this name."""
        live = await self._session()
        offered: list[str] = []
        cursor: str | None = None
        while True:
            from mcp.types import PaginatedRequestParams

            params = PaginatedRequestParams(cursor=cursor) if cursor else None
            listed = await self._exchange(
                live, partial(live.session.list_tools, params=params), self.config.timeout_s
            )
            for tool in listed.tools:
                if tool.name == self.tool:
                    if self.config.description is None and tool.description:
                        self._description = tool.description
                    self._parameters = dict(tool.input_schema)
                    return
                offered.append(tool.name)
            cursor = listed.next_cursor
            if not cursor:
                break
        raise ConfigError(
            f"MCP tool {self.name!r}: its server offers no tool {self.tool!r} "
            f"(it offers: {', '.join(sorted(offered)) or 'none'})",
            tool=self.name,
        )

    async def execute(self, arguments: dict[str, Any], timeout_s: float | None) -> ToolResult:
        limit = (
            self.config.timeout_s if timeout_s is None else min(timeout_s, self.config.timeout_s)
        )
        limit = max(limit, 0.001)
        live = await self._session()
        if not live.fresh:
            try:
                await self._exchange(live, live.session.send_ping, limit)
            except TimeoutError:
                return _timed_out(limit)
            except _SessionLost:
                # Died between calls (nothing of this call was sent): reconnect once.
                live.dead = True
                log.info("MCP tool %r: the session ended; reconnecting", self.name)
                live = await self._session()
        live.fresh = False
        try:
            result = await self._exchange(
                live, lambda: live.session.call_tool(self.tool, arguments), limit
            )
        except TimeoutError:
            return _timed_out(limit)
        except _SessionLost as exc:
            live.dead = True
            raise ToolUnavailable(
                f"MCP tool {self.name!r} is unavailable: its server went away during the call",
                tool=self.name,
            ) from exc
        except Exception as exc:
            from mcp import MCPError

            if isinstance(exc, MCPError):  # an error the server answered with (JSON-RPC)
                return ToolResult(error=exc.message, details={"code": exc.code})
            # Anything else is the transport's: named by kind, as its text may hold the URL.
            raise ToolUnavailable(
                f"MCP tool {self.name!r} is unavailable: the call failed ({_describe(exc)})",
                tool=self.name,
            ) from exc
        return _as_result(result)

    async def aclose(self) -> None:
        """Close the session and, for stdio, stop the server process."""
        live, self._live = self._live, None
        if live is not None:
            await live.close()

    async def _session(self) -> _Session:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        async with self._lock:
            live = self._live
            if live is not None and live.usable(loop):
                return live
            if live is not None:
                await live.close()
            self._live = await self._open()
            return self._live

    async def _open(self) -> _Session:
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[ClientSession] = loop.create_future()
        stop = asyncio.Event()
        task = asyncio.create_task(self._own(opened, stop), name=f"mcp-tool:{self.name}")
        self.sessions_opened += 1
        handshake_s = max(HANDSHAKE_TIMEOUT_S, self.config.timeout_s)
        try:
            async with asyncio.timeout(handshake_s):
                session = await opened
        except BaseException as exc:
            stop.set()
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            if isinstance(exc, TimeoutError):
                raise ToolUnavailable(
                    f"MCP tool {self.name!r} is unavailable: its server did not answer the "
                    f"handshake within {handshake_s:g} s",
                    tool=self.name,
                ) from exc
            if isinstance(exc, Exception):
                raise ToolUnavailable(
                    f"MCP tool {self.name!r} is unavailable: its server could not be reached "
                    f"({_describe(exc)})",
                    tool=self.name,
                ) from exc
            raise
        return _Session(session=session, task=task, stop=stop, loop=loop)

    async def _own(self, opened: asyncio.Future[ClientSession], stop: asyncio.Event) -> None:
        """Enter the transport and the session, hold them until ``stop``, exit them: all in
        this one task, as anyio's cancel scopes require."""
        from mcp import ClientSession

        try:
            async with contextlib.AsyncExitStack() as stack:
                read, write = await stack.enter_async_context(self._transport())
                session = await stack.enter_async_context(ClientSession(read, write))
                await session.initialize()
                if not opened.done():
                    opened.set_result(session)
                await stop.wait()
        except asyncio.CancelledError:
            if not opened.done():
                opened.cancel()
            raise
        except Exception as exc:
            if not opened.done():
                opened.set_exception(_leaf(exc))
            else:
                log.info("MCP tool %r: the session ended (%s)", self.name, _describe(exc))

    def _transport(self) -> AbstractAsyncContextManager[Any]:
        if self.config.command is not None:
            from mcp import StdioServerParameters, stdio_client

            command, *args = self.config.command
            # The SDK passes only a few safe variables of ours (PATH, HOME, ...) plus env.
            server = StdioServerParameters(command=command, args=args, env=self.config.env)
            return stdio_client(server)
        from mcp.client.streamable_http import streamable_http_client

        assert self.config.url is not None
        return streamable_http_client(self.config.url)

    async def _exchange(
        self, live: _Session, request: Callable[[], Awaitable[T]], limit: float
    ) -> T:
        """One request on the session, from the caller's task, bounded by ``limit``;
        ``_SessionLost`` if the connection closes or the owning task ends first."""
        from mcp import MCPError

        async def send() -> T:
            return await request()

        call = asyncio.create_task(send())
        try:
            done, _ = await asyncio.wait(
                {call, live.task}, timeout=limit, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if not call.done():
                call.cancel()  # the SDK tells the server the request is cancelled
                with contextlib.suppress(BaseException):
                    await call
        if call in done:
            try:
                return call.result()
            except MCPError as exc:
                if exc.code == CONNECTION_CLOSED:
                    raise _SessionLost(exc.message) from exc
                raise
            except OSError as exc:
                raise _SessionLost(_describe(exc)) from exc
        if live.task.done():
            raise _SessionLost("the session's task ended")
        raise TimeoutError


def _as_result(result: CallToolResult) -> ToolResult:
    texts: list[str] = []
    other: list[dict[str, Any]] = []
    for item in result.content:
        text = getattr(item, "text", None)
        if isinstance(text, str):
            texts.append(text)
        else:
            other.append({"type": item.type})
    output = "\n".join(texts)
    details: dict[str, Any] = {}
    if result.structured_content is not None:
        details["structured"] = result.structured_content
    if other:
        details["other_content"] = other
    if result.is_error:
        return ToolResult(error=output or "the tool reported an error", details=details)
    return ToolResult(output=output, details=details)


def _timed_out(limit: float) -> ToolResult:
    return ToolResult(error=f"timed out after {limit:g} s", details={"timed_out": True})


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside the exception groups anyio task groups raise."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _describe(exc: BaseException) -> str:
    """The error's kind, and an OS error's reason: never its text, which may hold a URL."""
    from mcp import MCPError

    exc = _leaf(exc)
    if isinstance(exc, MCPError):
        return f"{type(exc).__name__}: {exc.message}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return type(exc).__name__
