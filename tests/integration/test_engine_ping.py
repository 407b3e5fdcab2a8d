"""Pooled PostgreSQL connections are pinged before use only after they sat idle.

``core.db.engine``: a ping per checkout was a round trip per transaction on the hot path;
a connection used within the last second is handed out as is, an idle one is pinged, and
a dead one is replaced before the caller sees it.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import Engine, text

from core.db import engine as engines
from core.db.engine import make_async_engine, make_engine


def _count_pings(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    pings: list[int] = []
    real = engine.dialect.do_ping

    def counted(dbapi_connection: Any) -> bool:
        pings.append(1)
        return bool(real(dbapi_connection))

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    return pings


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


@pytest.mark.postgres
def test_a_connection_used_just_now_is_not_pinged_and_an_idle_one_is(
    pg_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engines, "PING_AFTER_IDLE_S", 0.3)
    engine = make_engine(pg_database_url, pool_size=1, max_overflow=0)
    try:
        pings = _count_pings(engine, monkeypatch)
        first = _backend_pid(engine)  # a new connection: pinged (no idle time known)
        for _ in range(5):
            assert _backend_pid(engine) == first  # hot: handed out as is
        assert len(pings) == 1
        time.sleep(0.4)
        assert _backend_pid(engine) == first
        assert len(pings) == 2  # idle past the limit: pinged once
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_an_idle_connection_the_server_dropped_is_replaced_unseen(
    pg_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engines, "PING_AFTER_IDLE_S", 0.3)
    engine = make_engine(pg_database_url, pool_size=1, max_overflow=0)
    admin = make_engine(pg_database_url, pool_size=1, max_overflow=0)
    try:
        dead = _backend_pid(engine)
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": dead})
        time.sleep(0.4)
        # The pooled connection is dead; the ping finds it and the pool opens another.
        assert _backend_pid(engine) != dead
    finally:
        engine.dispose()
        admin.dispose()


@pytest.mark.postgres
async def test_the_async_engine_pings_idle_connections_too(
    pg_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engines, "PING_AFTER_IDLE_S", 0.3)
    engine = make_async_engine(pg_database_url, pool_size=1, max_overflow=0)
    admin = make_engine(pg_database_url, pool_size=1, max_overflow=0)
    try:

        async def pid() -> int:
            async with engine.connect() as conn:
                return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())

        dead = await pid()
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": dead})
        time.sleep(0.4)
        assert await pid() != dead
    finally:
        await engine.dispose()
        admin.dispose()
