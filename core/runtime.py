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
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType

import httpx
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from core.db.engine import make_async_engine, make_engine, make_sessionmaker, trace_engine_options
from core.db.migrate import ensure_schema
from core.embedded.manager import EmbeddedModels
from core.errors import ConfigError, PoolUnavailable
from core.pools.client import new_http_client
from core.pools.registry import Pools
from core.runner import Runner
from core.settings import PoolSettings, Settings
from core.tools.backends import ToolBackends


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
        self.tools = ToolBackends.from_settings(settings)
        """The configured tools (built lazily: nothing starts before a job calls one)."""

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
        # concurrency limits ever queue.
        self.http = new_http_client(configured.values())
        self.pools = Pools.from_settings(configured, self.http)

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
        await self.pools.aclose()
        await self.tools.aclose()
        if self.http is not None:
            await self.http.aclose()
        if self.engine is not None:
            await self.engine.dispose()
        if self.sync_engine is not None:
            self.sync_engine.dispose()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
