"""Engines and sessions for the two supported backends: SQLite (default) and PostgreSQL.

One database URL in settings serves both the sync engine (migrations, the CLI's schema
check) and the async engine (the runner, the API), so the URL is normalised here:

    sync_url("postgres://u@h/db")       -> "postgresql+psycopg://u@h/db"
    async_url("sqlite:///data/p.db")    -> "sqlite+aiosqlite:///data/p.db"

PostgreSQL is always reached through psycopg 3 (the only driver Ponder ships), whatever
driver the URL names. Creating an engine opens no connection and touches no file.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry

from core.errors import ConfigError

_POSTGRES_DRIVER = "postgresql+psycopg"
_SQLITE_SYNC_DRIVER = "sqlite"
_SQLITE_ASYNC_DRIVER = "sqlite+aiosqlite"

SQLITE_BUSY_TIMEOUT_MS = 10_000
"""How long a SQLite connection waits for another process's write lock before failing."""

# Per process, unless the caller passes sizes (``Settings.db_pool``). The API serves many
# requests at once and a worker runs jobs concurrently, each holding a connection only
# around its reads and journal writes; 10 + 20 overflow keeps a handful of processes well
# under PostgreSQL's default max_connections of 100.
POOL_SIZE = 10
MAX_OVERFLOW = 20


def _parse(url: str) -> URL:
    try:
        return make_url(url)
    except ArgumentError as exc:
        # The URL may hold a password: name only its scheme.
        scheme = url.split(":", 1)[0] if ":" in url else "?"
        raise ConfigError(
            f"database URL with scheme {scheme!r} cannot be parsed", field="database_url"
        ) from exc


def _with_driver(url: str, driver: str) -> str:
    # Swap only the scheme: re-rendering a parsed URL re-escapes it ("sqlite:///:memory:"
    # would come back as "%3Amemory%3A"), and the rest must reach the driver unchanged.
    return driver + url[url.index("://") :]


def _backend(url: URL) -> str:
    backend = url.get_backend_name()
    if backend in ("postgresql", "postgres"):
        return "postgresql"
    if backend == "sqlite":
        return "sqlite"
    raise ConfigError(
        f"unsupported database {url.drivername!r}: Ponder runs on SQLite or PostgreSQL",
        field="database_url",
    )


def sync_url(url: str) -> str:
    """The URL for a sync engine: ``postgresql+psycopg://...`` or ``sqlite:///...``."""
    parsed = _parse(url)
    driver = _POSTGRES_DRIVER if _backend(parsed) == "postgresql" else _SQLITE_SYNC_DRIVER
    return _with_driver(url, driver)


def async_url(url: str) -> str:
    """The URL for an async engine: psycopg 3 (async mode) or aiosqlite."""
    parsed = _parse(url)
    # psycopg 3 serves both modes under one dialect name; create_async_engine picks async.
    driver = _POSTGRES_DRIVER if _backend(parsed) == "postgresql" else _SQLITE_ASYNC_DRIVER
    return _with_driver(url, driver)


def is_sqlite(url: str) -> bool:
    return _backend(_parse(url)) == "sqlite"


def _enable_wal(cursor: Any) -> None:
    """``PRAGMA journal_mode=WAL``, retried: SQLite answers "database is locked" at once,
    without its busy handler, while another connection switches the same new file."""
    for attempt in range(100):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except Exception as exc:  # sqlite3 or aiosqlite: both say "database is locked"
            if "locked" not in str(exc) or attempt == 99:
                raise
            time.sleep(0.05)


def _set_sqlite_pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # busy_timeout first: switching to WAL needs a lock another process may hold.
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # WAL lets readers (the API, a CLI) proceed while a worker writes the journal.
        _enable_wal(cursor)
        # NORMAL is durable against application crashes in WAL mode; only an OS crash or
        # power loss can drop the last commits, which a resumed job re-records anyway.
        cursor.execute("PRAGMA synchronous=NORMAL")
        # Off by default in SQLite; without it ON DELETE CASCADE silently does nothing.
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


PING_AFTER_IDLE_S = 1.0
"""A pooled PostgreSQL connection idle this long is pinged before use (below)."""


def _ping_if_idle(engine: Engine) -> None:
    """Ping a pooled connection on checkout only when it sat idle for a while.

    A server restart or an idle-timeout proxy leaves dead connections in the pool;
    ``pool_pre_ping`` finds them by pinging on *every* checkout, a round trip per
    transaction, two per job on a worker. A connection checked in less than
    ``PING_AFTER_IDLE_S`` ago was alive then; if the server died since, the statement
    fails as a disconnect, the pool drops its connections, and the caller's retry (the
    worker task's, the API's 503) gets new ones, exactly as when the server dies in the
    middle of a transaction. A failed ping raises ``DisconnectionError``: the pool then
    replaces the connection and tries again (SQLAlchemy's pessimistic recipe).
    """

    def on_checkin(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info["idle_since"] = time.monotonic()

    def on_checkout(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is not None and time.monotonic() - idle_since < PING_AFTER_IDLE_S:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError(f"pooled connection failed its ping: {exc}") from exc
        if not alive:
            raise DisconnectionError("pooled connection failed its ping")

    event.listen(engine, "checkin", on_checkin)
    event.listen(engine, "checkout", on_checkout)


def _engine_options(url: str, overrides: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    in_memory = ":memory:" in url or url.rstrip("/").endswith(":")
    if "poolclass" not in overrides and not in_memory:  # sizes mean nothing there
        # A SQLite file gets a QueuePool too (SQLAlchemy 2's default for files), sized alike.
        options.update(pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW)
    # The sqlite3 driver's default ("legacy") transaction control is kept on purpose: it
    # begins a transaction only at the first write, so a read-then-write never has to
    # upgrade a read snapshot to a write lock, the one case busy_timeout cannot wait out.
    options.update(overrides)
    return options


def make_engine(url: str, **overrides: Any) -> Engine:
    """A sync engine for ``url`` (any accepted spelling); ``overrides`` go to create_engine."""
    normalised = sync_url(url)
    engine = create_engine(normalised, **_engine_options(normalised, overrides))
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _set_sqlite_pragmas)
    elif not overrides.get("pool_pre_ping"):
        _ping_if_idle(engine)
    return engine


def make_async_engine(url: str, **overrides: Any) -> AsyncEngine:
    """An async engine for ``url``; ``overrides`` go to create_async_engine."""
    normalised = async_url(url)
    engine = create_async_engine(normalised, **_engine_options(normalised, overrides))
    if engine.dialect.name == "sqlite":
        # aiosqlite's adapted connection runs these synchronously inside the pool's connect.
        event.listen(engine.sync_engine, "connect", _set_sqlite_pragmas)
    elif not overrides.get("pool_pre_ping"):
        _ping_if_idle(engine.sync_engine)
    return engine


def trace_engine_options(url: str) -> dict[str, Any]:
    """The synchronous engine carries the trace writes: one commit per model call.

    On PostgreSQL its sessions commit without waiting for the WAL flush: a row is durable
    against a crash of Ponder (it is in the server's WAL buffers when the commit returns)
    but not against a crash of the database server itself, where the last ~0.2 s of
    entries may be lost. A lost journal entry only means paying for that call again on
    resume; waiting for the flush cost ~1.5 ms per call here.
    """
    if url.startswith(("postgres", "postgresql")):
        return {"connect_args": {"options": "-c synchronous_commit=off"}}
    return {}


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # expire_on_commit=False: rows committed at the task or request boundary stay readable
    # afterwards without a lazy reload, which async sessions cannot do implicitly.
    return async_sessionmaker(engine, expire_on_commit=False)
