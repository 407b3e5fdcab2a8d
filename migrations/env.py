"""Alembic environment for Ponder's schema (``core.db.models``).

The URL comes from the Config's ``sqlalchemy.url`` when ``core.db.migrate`` set it, else
from Ponder's settings, so ``alembic upgrade head`` from the repo root uses the same
database as the service.

Concurrent runs are serialised (a CLI and a worker may both find a fresh SQLite file):
SQLite migrates inside ``BEGIN IMMEDIATE``, PostgreSQL under a transaction-scoped
advisory lock. Alembic reads the current revision only after the lock is held, so the
second runner finds the work done.
"""

from __future__ import annotations

from logging.config import fileConfig
from typing import Any

from alembic import context
from alembic.autogenerate.api import AutogenContext
from alembic.operations.ops import MigrationScript
from sqlalchemy import Connection, TypeDecorator, text
from sqlalchemy.pool import NullPool

from core.db.engine import is_sqlite, make_engine, sync_url
from core.db.migrate import ensure_sqlite_directory
from core.db.models import Base
from core.settings import get_settings

config = context.config
target_metadata = Base.metadata

if config.config_file_name is not None and config.file_config.has_section("loggers"):
    # Only the alembic CLI (with alembic.ini) configures logging; calls from code keep
    # the host application's logging untouched.
    fileConfig(config.config_file_name, disable_existing_loggers=False)

# Any fixed 64-bit key works; this one spells "ponder" so it is recognisable in pg_locks.
_PG_MIGRATION_LOCK_KEY = 0x706F6E646572


def _database_url() -> str:
    return sync_url(
        config.get_main_option("sqlalchemy.url") or get_settings().resolved_database_url()
    )


def _render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | bool:
    # Revision files must not import application code, which keeps changing after the
    # revision is written: a TypeDecorator (UTCDateTime) is rendered as the type it stores.
    if type_ == "type" and isinstance(obj, TypeDecorator):
        impl = obj.impl_instance
        if type(impl).__module__.startswith("sqlalchemy.sql."):
            return f"sa.{impl!r}"
    return False


def _skip_empty_autogenerate(
    context_: Any, revision: Any, directives: list[MigrationScript]
) -> None:
    # `alembic revision --autogenerate` with nothing to change writes no empty file.
    if config.cmd_opts is not None and getattr(config.cmd_opts, "autogenerate", False):
        script = directives[0]
        if script.upgrade_ops is not None and script.upgrade_ops.is_empty():
            directives[:] = []


def _configure_options(sqlite: bool) -> dict[str, Any]:
    return {
        "target_metadata": target_metadata,
        # SQLite cannot ALTER most things: batch mode recreates the table instead.
        "render_as_batch": sqlite,
        "compare_type": True,
        "render_item": _render_item,
        "process_revision_directives": _skip_empty_autogenerate,
    }


def run_migrations_offline() -> None:
    url = _database_url()
    context.configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **_configure_options(is_sqlite(url)),
    )
    with context.begin_transaction():
        context.run_migrations()


def _lock(connection: Connection, sqlite: bool) -> None:
    if sqlite:
        # The sqlite3 driver would start no transaction for DDL; take the write lock now
        # (waiting up to busy_timeout for another migrator) and keep every revision of
        # this run in one transaction, so a failure leaves the previous schema intact.
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        connection.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK_KEY}
        )


def _check_foreign_keys(connection: Connection) -> None:
    violations = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if violations:
        raise RuntimeError(
            f"migration left {len(violations)} foreign key violation(s), e.g. {violations[0]}"
        )


def run_migrations_online() -> None:
    url = _database_url()
    sqlite = is_sqlite(url)
    if sqlite:
        ensure_sqlite_directory(url)
    engine = make_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            if sqlite:
                # Batch mode recreates a table by copy, drop and rename; with foreign keys
                # ON, dropping `jobs` would cascade-delete every span and journal entry.
                # The pragma is ignored inside a transaction, so it goes first, and the
                # keys are checked before commit instead (SQLite's documented procedure).
                connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
                connection.commit()
            context.configure(
                connection=connection,
                # SQLite does support transactional DDL once BEGIN is issued (see _lock).
                transactional_ddl=True,
                **_configure_options(sqlite),
            )
            with context.begin_transaction():
                _lock(connection, sqlite)
                context.run_migrations()
                if sqlite:
                    _check_foreign_keys(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
