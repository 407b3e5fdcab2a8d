"""What a process needs to run jobs: database sessions, model pools, and the runner.

``Runtime`` is the one builder of them, for the API, the Celery worker and the CLI. It
is an async context manager. Entering it migrates a SQLite database on first use and
opens the engines: the async one for sessions and the synchronous one the trace writer
and heartbeats use (``trace_engine_options``). Then the pool clients, sharing one HTTP
client, in one of two ways:

    Runtime(settings, roles={"small"})    the CLI: the configured pools, or, when none
                                          are configured, the embedded CPU models for
                                          these roles (a child process, stopped on exit)
    Runtime(settings, pools=pools)        the API and the worker: exactly these pools
                                          (every configured one, or the embedded models'
                                          that `ponder serve` started); never starts a
                                          model itself. Building clients opens no socket.

``reload(settings)`` (the config file re-read on SIGHUP) swaps in new pool clients and
tools in place: a job that started before keeps the clients it holds, a job that starts
after gets the new ones. The old ones are closed once no job holds them (weak
references tell), or at the latest after the longest a run may last
(``worker.time_limit_s + hard_limit_extra_s``), or when the runtime exits.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType

import httpx
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from core.db.engine import make_async_engine, make_engine, make_sessionmaker, trace_engine_options
from core.db.migrate import ensure_schema
from core.embedded.manager import EmbeddedModels
from core.errors import ConfigError, PoolUnavailable
from core.pools.registry import Pools
from core.runner import Runner
from core.settings import PoolSettings, Settings
from core.tools.backends import ToolBackend, ToolBackends

log = logging.getLogger(__name__)

_RETIRED_POLL_S = 1.0


class LiveTools(Mapping[str, ToolBackend]):
    """The process's tools by name, swappable in place like ``Pools`` (``Runtime.reload``)."""

    def __init__(self, backends: Mapping[str, ToolBackend]) -> None:
        self._backends = dict(backends)

    def swap(self, backends: Mapping[str, ToolBackend]) -> None:
        self._backends = dict(backends)

    def __getitem__(self, name: str) -> ToolBackend:
        return self._backends[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._backends)

    def __len__(self) -> int:
        return len(self._backends)

    async def aclose(self) -> None:
        await ToolBackends(self._backends).aclose()


class _Retired:
    """What a reload replaced: an HTTP client and the pool clients on it, closed as soon
    as no job holds any of them; tools (an MCP session, its server process), closed
    after ``grace_s``, the longest a run may last (a job's bound tool is not weakly
    trackable: closing it needs the object itself)."""

    def __init__(self, pools: Pools, tools: Mapping[str, ToolBackend], grace_s: float) -> None:
        self.http = pools.http
        # A job holds the clients it looked up when it started (core.runner), never the
        # Pools: once none of them is referenced, no job can call them.
        self._clients = [weakref.ref(client) for client in pools.values()]
        self.tools = ToolBackends(tools)
        self.deadline = time.monotonic() + grace_s

    def idle(self) -> bool:
        if time.monotonic() >= self.deadline:
            return True
        return not self.tools and all(ref() is None for ref in self._clients)

    async def aclose(self) -> None:
        if self.http is not None:
            await self.http.aclose()
        await self.tools.aclose()


class Runtime:
    def __init__(
        self,
        settings: Settings,
        roles: Iterable[str] | None = None,
        *,
        pools: Mapping[str, PoolSettings] | None = None,
    ) -> None:
        """
        Args:
            settings: database, pools, embedded models.
            roles: the model roles this process will call (None: no models at all).
            pools: role -> pool settings to build clients for, as given (``roles`` is
                then ignored and no embedded model is started).
        """
        self.settings = settings
        self.roles = set(roles) if roles is not None else None
        self.given_pools = dict(pools) if pools is not None else None
        self.embedded: EmbeddedModels | None = None
        self.engine: AsyncEngine | None = None
        self.sync_engine: Engine | None = None
        self.sessions: async_sessionmaker[AsyncSession]
        self.pools: Pools = Pools({})
        self.pool_settings: dict[str, PoolSettings] = {}
        """The settings of the pools in ``pools``."""
        self.http: httpx.AsyncClient | None = None
        self.tools = LiveTools(ToolBackends.from_settings(settings))
        """The configured tools (built lazily: nothing starts before a job calls one)."""
        self._retired: list[_Retired] = []
        self._reaping: asyncio.Task[None] | None = None

    @property
    def runner(self) -> Runner:
        assert self.sync_engine is not None
        return Runner(self.sessions, self.pools, self.sync_engine, self.tools)

    async def __aenter__(self) -> Runtime:
        url = self.settings.resolved_database_url()
        if url.startswith("sqlite"):
            # A local file is ours to create and migrate; a shared PostgreSQL is migrated
            # on purpose, with `ponder db upgrade`, by whoever deploys.
            await asyncio.to_thread(ensure_schema, url)
        pool = self.settings.db_pool.engine_options()
        self.engine = make_async_engine(url, **pool)
        self.sessions = make_sessionmaker(self.engine)
        self.sync_engine = make_engine(url, **pool, **trace_engine_options(url))
        try:
            if self.given_pools is not None:
                self._build_pools(self.given_pools)
            elif self.roles:
                await self._start_pools()
        except BaseException:
            await self.__aexit__(None, None, None)  # `async with` would not call it
            raise
        return self

    async def _start_pools(self) -> None:
        assert self.roles is not None
        configured: dict[str, PoolSettings] = dict(self.settings.pools)
        if not configured:
            if not self.settings.embedded.enabled:
                raise ConfigError(
                    "no model pools are configured and the embedded models are disabled; "
                    "set PONDER_POOLS__<ROLE>__ENDPOINTS and __MODEL, or enable "
                    "PONDER_EMBEDDED__ENABLED"
                )
            wanted = [r for r in self.settings.embedded.roles if r in self.roles]
            if wanted:
                embedded = self.settings.embedded.model_copy(update={"roles": wanted})
                cache = self.settings.embedded.cache_dir or (self.settings.data_dir / "models")
                self.embedded = EmbeddedModels(embedded, Path(cache))
                configured = await asyncio.to_thread(self.embedded.start)
        self._build_pools(configured)

    def _build_pools(self, configured: Mapping[str, PoolSettings]) -> None:
        self.pool_settings = dict(configured)
        if not configured:
            return
        # One connection pool for every role, sized so that only the per-endpoint
        # concurrency limits ever queue; owned by the Pools, so that a reload retires
        # both together.
        self.pools = Pools.from_settings(configured)
        self.http = self.pools.http

    def reload(self, settings: Settings, *, pools: bool = True) -> list[str]:
        """Serve ``settings``' pools (unless ``pools`` is False) and tools from now on.

        Jobs running keep the clients and tools they hold; the replaced ones are closed
        when no job holds them. Returns what changed, for the log (``pools: small``).
        """
        changed: list[str] = []
        if pools and dict(settings.pools) != self.pool_settings:
            new = dict(settings.pools)
            roles = sorted(
                r for r in {*new, *self.pool_settings} if new.get(r) != self.pool_settings.get(r)
            )
            fresh = Pools.from_settings(new) if new else Pools({})
            old = self.pools.swap(fresh)
            self.http = self.pools.http
            self.pool_settings = new
            self._retire(old, {})
            changed.append(f"pools: {', '.join(roles)}")
        if (
            settings.tools != self.settings.tools
            or settings.python_tool != self.settings.python_tool
        ):
            backends = dict(ToolBackends.from_settings(settings))
            kept: dict[str, ToolBackend] = {}
            replaced: dict[str, ToolBackend] = {}
            for name, backend in self.tools.items():
                same = name in backends and (
                    settings.tools.get(name) == self.settings.tools.get(name)
                )
                (kept if same else replaced)[name] = backend
            backends.update(kept)  # an unchanged MCP tool keeps its session
            self.tools.swap(backends)
            names = sorted({*replaced, *(set(backends) - set(kept))})
            self._retire(Pools({}), replaced)
            changed.append(f"tools: {', '.join(names)}")
        self.settings = self.settings.model_copy(
            update={"tools": settings.tools, "python_tool": settings.python_tool}
            | ({"pools": settings.pools} if pools else {})
        )
        return changed

    def _retire(self, pools: Pools, tools: Mapping[str, ToolBackend]) -> None:
        if pools.http is None and not tools:
            return
        worker = self.settings.worker
        self._retired.append(
            _Retired(pools, tools, worker.time_limit_s + worker.hard_limit_extra_s)
        )
        if self._reaping is None or self._reaping.done():
            self._reaping = asyncio.get_running_loop().create_task(self._close_retired())

    async def _close_retired(self) -> None:
        while self._retired:
            await asyncio.sleep(_RETIRED_POLL_S)
            for retired in [r for r in self._retired if r.idle()]:
                self._retired.remove(retired)
                try:
                    await retired.aclose()
                except Exception as exc:  # closing is best effort; the process goes on
                    log.warning("closing replaced pools failed (%s: %s)", type(exc).__name__, exc)

    async def check_pools(self, roles: Iterable[str]) -> None:
        """Fail fast, before any job is written, when a needed pool answers nowhere."""
        for role in sorted(set(roles)):
            pool = self.pools.get(role)
            if pool is None:
                continue  # resolve_roles reports unknown roles with the field name
            health = await pool.health()
            if not any(h.ok for h in health):
                urls = ", ".join(h.url for h in health)
                raise PoolUnavailable(
                    f"pool '{role}' is unreachable: no endpoint answered ({urls})"
                )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._reaping is not None:
            self._reaping.cancel()
        for retired in self._retired:
            await retired.aclose()
        self._retired.clear()
        await self.pools.aclose()
        await self.tools.aclose()
        if self.engine is not None:
            await self.engine.dispose()
        if self.sync_engine is not None:
            self.sync_engine.dispose()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
