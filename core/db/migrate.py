"""Alembic, driven from code: the CLI, the worker and the tests migrate through here.

The scripts live in the ``migrations`` package and are found through its import path,
so this works from an installed package as well as from the repo root, whatever the
current directory. ``alembic upgrade head`` from the repo root works too (alembic.ini),
taking the URL from settings.
"""

from __future__ import annotations

import threading
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

import migrations
from core.db.engine import is_sqlite, make_engine, sync_url
from core.errors import ConfigError

MIGRATIONS_DIR = Path(migrations.__file__).resolve().parent

# Alembic runs env.py through module-level proxies (alembic.context, alembic.op) that one
# command at a time may use per process: two threads migrating at once (asyncio.to_thread
# from two runtimes) would swap each other's context mid-run. Processes are serialised
# by the database itself, in env.py.
_COMMAND_LOCK = threading.Lock()


def _escape(value: str) -> str:
    # Config options go through ConfigParser interpolation: a percent-encoded password
    # ("p%40ss") would otherwise be read as an interpolation and fail.
    return value.replace("%", "%%")


def _scripts_config() -> Config:
    config = Config()
    config.set_main_option("script_location", _escape(str(MIGRATIONS_DIR)))
    return config


def alembic_config(url: str) -> Config:
    """An Alembic config for ``url`` (any accepted spelling), independent of the cwd."""
    config = _scripts_config()
    config.set_main_option("sqlalchemy.url", _escape(sync_url(url)))
    return config


@cache
def _scripts() -> ScriptDirectory:
    # Loading the scripts imports every revision file; they cannot change in a process.
    return ScriptDirectory.from_config(_scripts_config())


def head_revision() -> str:
    head = _scripts().get_current_head()
    if head is None:
        raise ConfigError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


def sqlite_file(url: str) -> Path | None:
    """The file behind a SQLite URL, or None (in-memory, a ``file:`` URI, not SQLite)."""
    if not is_sqlite(url):
        return None
    parsed = make_url(url)
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    if parsed.query.get("uri") in ("true", "1"):
        return None
    return Path(database)


def ensure_sqlite_directory(url: str) -> None:
    """Create the SQLite file's parent directory (SQLite creates the file, not the dir)."""
    path = sqlite_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate up to ``revision``; creates a SQLite file and its directory if missing.

    Safe to run from several processes at once: ``migrations/env.py`` serialises them
    (a write lock on SQLite, an advisory lock on PostgreSQL), and the later ones find
    the work done.
    """
    ensure_sqlite_directory(url)
    with _COMMAND_LOCK:
        command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    with _COMMAND_LOCK:
        command.downgrade(alembic_config(url), revision)


def current_revision(url: str) -> str | None:
    """The revision the database is at; None when unmigrated (or the SQLite file is absent)."""
    path = sqlite_file(url)
    if path is not None and not path.exists():
        # Connecting would create an empty file as a side effect of a read.
        return None
    engine = make_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def _stored_revisions(url: str) -> tuple[str, ...] | None:
    """The rows of alembic_version in one query, or None if they cannot be read."""
    path = sqlite_file(url)
    if path is not None and not path.exists():
        return None
    engine = make_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT version_num FROM alembic_version"))
            return tuple(sorted(row[0] for row in rows))
    except DBAPIError:
        # Most often: no alembic_version table yet. Anything else (an unreachable
        # server, a locked file) is reported properly by the upgrade that follows.
        return None
    finally:
        engine.dispose()


def ensure_schema(url: str) -> None:
    """Bring the database to head; one query when it already is there.

    Raises:
        ConfigError: the database carries a revision this Ponder does not know (it was
            migrated by a newer version); upgrading cannot help and downgrading here
            would lose data.
    """
    head = head_revision()
    stored = _stored_revisions(url)
    if stored == (head,):
        return
    unknown = [rev for rev in stored or () if not _is_known(rev)]
    if unknown:
        raise ConfigError(
            f"the database is at revision {', '.join(unknown)}, which this version of "
            f"Ponder does not know (its head is {head}); it was probably migrated by a "
            "newer Ponder",
            field="database_url",
        )
    upgrade(url)


def _is_known(revision: str) -> bool:
    try:
        return _scripts().get_revision(revision) is not None
    except CommandError:  # alembic's wrapping of "Can't locate revision"
        return False
