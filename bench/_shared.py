"""Helpers every benchmark uses. Imported as ``_shared``: a script's own folder is first
on ``sys.path`` when it runs as ``python bench/NAME.py``."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ADMIN_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"
FINAL = ("succeeded", "failed", "cancelled")


def percentile(values: list[float], q: float) -> float:
    """The q-quantile by rank (no interpolation): what p99 of N samples usually means."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def temp_database() -> Iterator[str]:
    """A fresh PostgreSQL database migrated to head, dropped afterwards."""
    import psycopg

    from core.db.migrate import upgrade

    name = f"ponder_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_POSTGRES, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = ADMIN_POSTGRES.rsplit("/", 1)[0] + f"/{name}"
        upgrade(url)
        yield url
    finally:
        with psycopg.connect(ADMIN_POSTGRES, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def cpu_seconds_by_kind(simulator_pid: int | None = None) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each kind of process on this machine:
    ``worker`` (``ponder worker`` and its pool), ``postgres``, ``redis``, ``simulator``,
    ``bench`` (this process: publishing, polling) and ``other``. Linux only (``/proc``);
    the difference of two readings over a run is where that run's CPU went."""
    tick = os.sysconf("SC_CLK_TCK")
    me = os.getpid()
    totals: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone since the listing
        fields = stat.rsplit(")", 1)[1].split()
        seconds = (int(fields[11]) + int(fields[12])) / tick
        pid = int(entry.name)
        if pid == me:
            kind = "bench"
        elif pid == simulator_pid or "app.cli simulate" in command:
            kind = "simulator"
        elif "app.cli worker" in command or "ponder worker" in command:
            kind = "worker"
        elif "postgres" in command:
            kind = "postgres"
        elif "redis-server" in command:
            kind = "redis"
        else:
            kind = "other"
        totals[kind] = totals.get(kind, 0.0) + seconds
    return totals
