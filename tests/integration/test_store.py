"""The database plumbing on SQLite and PostgreSQL: migrations, engines, constraints.

Every test runs on both backends (see tests/fixtures/database.py); what the runner and
the API rely on is asserted here once, so their tests can take the store for granted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, event, func, inspect, select, text, update
from sqlalchemy import delete as sql_delete
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from core.db.engine import async_url, make_async_engine, make_engine, make_sessionmaker, sync_url
from core.db.migrate import (
    current_revision,
    downgrade,
    ensure_schema,
    head_revision,
    upgrade,
)
from core.db.models import ApiKey, Base, Job, ModelCall, Span
from core.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_TABLES = set(Base.metadata.tables)


@contextmanager
def sync_engine(url: str) -> Iterator[Engine]:
    engine = make_engine(url, poolclass=NullPool)
    try:
        yield engine
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    with sync_engine(url) as engine:
        return set(inspect(engine).get_table_names())


@contextmanager
def recorded_statements() -> Iterator[list[str]]:
    """Every statement any engine sends while the block runs."""
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(Engine, "before_cursor_execute", record)


# --- migrations ---------------------------------------------------------------------


def test_upgrade_to_head_creates_every_table(empty_database_url: str) -> None:
    assert current_revision(empty_database_url) is None

    upgrade(empty_database_url)

    assert table_names(empty_database_url) == SCHEMA_TABLES | {"alembic_version"}
    assert current_revision(empty_database_url) == head_revision()


def test_downgrade_to_base_then_upgrade_again(empty_database_url: str) -> None:
    upgrade(empty_database_url)

    downgrade(empty_database_url, "base")
    assert table_names(empty_database_url) <= {"alembic_version"}
    assert current_revision(empty_database_url) is None

    upgrade(empty_database_url)
    assert table_names(empty_database_url) == SCHEMA_TABLES | {"alembic_version"}
    assert current_revision(empty_database_url) == head_revision()


def test_migrations_match_the_models(database_url: str) -> None:
    with sync_engine(database_url) as engine, engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        differences = compare_metadata(context, Base.metadata)
    assert differences == [], "models and migrations differ: add a revision"


def test_ensure_schema_migrates_once_then_costs_one_query(
    empty_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # From another directory: the scripts are found through the package, not the cwd.
    monkeypatch.chdir(tmp_path)

    ensure_schema(empty_database_url)
    assert current_revision(empty_database_url) == head_revision()

    with recorded_statements() as statements:
        ensure_schema(empty_database_url)
    ours = [s for s in statements if "alembic_version" in s]
    assert ours == ["SELECT version_num FROM alembic_version"]
    writes = ("CREATE", "ALTER", "DROP", "INSERT", "UPDATE", "DELETE", "BEGIN")
    assert not [s for s in statements if s.lstrip().upper().startswith(writes)]
    assert table_names(empty_database_url) == SCHEMA_TABLES | {"alembic_version"}


def assert_at_head_once(url: str) -> None:
    with sync_engine(url) as engine, engine.connect() as connection:
        versions = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    assert [row[0] for row in versions] == [head_revision()]
    assert table_names(url) == SCHEMA_TABLES | {"alembic_version"}


def test_concurrent_first_use_from_several_processes(empty_database_url: str) -> None:
    # A CLI solve and workers starting together on a fresh database. Each process says
    # when its imports are done and waits for the word to go, so the migrations overlap.
    script = (
        "import sys\n"
        "from core.db.migrate import ensure_schema\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "ensure_schema(sys.argv[1])\n"
    )
    with ExitStack() as stack:
        processes = []
        for _ in range(3):
            process = stack.enter_context(
                subprocess.Popen(
                    [sys.executable, "-c", script, empty_database_url],
                    cwd=REPO_ROOT,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
            stack.callback(process.kill)  # runs before Popen's exit waits; no-op if done
            processes.append(process)
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        for process in processes:
            _, stderr = process.communicate(timeout=120)
            assert process.returncode == 0, stderr
    assert_at_head_once(empty_database_url)


def test_concurrent_first_use_from_several_threads(empty_database_url: str) -> None:
    # Two runtimes in one process, each calling asyncio.to_thread(ensure_schema, ...).
    with ThreadPoolExecutor(max_workers=4) as pool:
        for future in [pool.submit(ensure_schema, empty_database_url) for _ in range(4)]:
            future.result()
    assert_at_head_once(empty_database_url)


def test_ensure_schema_refuses_a_revision_from_a_newer_ponder(empty_database_url: str) -> None:
    upgrade(empty_database_url)
    with sync_engine(empty_database_url) as engine, engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))

    with pytest.raises(ConfigError, match="9999_future"):
        ensure_schema(empty_database_url)


def test_alembic_cli_from_the_repo_root_uses_settings(empty_database_url: str) -> None:
    env = {**os.environ, "PONDER_DATABASE_URL": empty_database_url}
    subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=REPO_ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert current_revision(empty_database_url) == head_revision()


def test_reading_the_revision_of_a_missing_sqlite_file_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "absent" / "ponder.db"
    assert current_revision(f"sqlite:///{path}") is None
    assert not path.parent.exists()


# --- engines ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "sync", "async_"),
    [
        (
            "postgresql://u@h:5432/db",
            "postgresql+psycopg://u@h:5432/db",
            "postgresql+psycopg://u@h:5432/db",
        ),
        ("postgres://u:p%40ss@h/db", "postgresql+psycopg://u:p%40ss@h/db", None),
        ("postgresql+asyncpg://h/db", "postgresql+psycopg://h/db", "postgresql+psycopg://h/db"),
        ("sqlite:///data/p.db", "sqlite:///data/p.db", "sqlite+aiosqlite:///data/p.db"),
        ("sqlite+aiosqlite:////abs/p.db", "sqlite:////abs/p.db", "sqlite+aiosqlite:////abs/p.db"),
        ("sqlite:///:memory:", "sqlite:///:memory:", "sqlite+aiosqlite:///:memory:"),
    ],
)
def test_urls_are_normalised(url: str, sync: str, async_: str | None) -> None:
    assert sync_url(url) == sync
    assert async_url(url) == (async_ or sync)


@pytest.mark.parametrize("url", ["mysql://h/db", "not a url"])
def test_unsupported_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        sync_url(url)


async def test_sqlite_connections_are_set_up_for_several_processes(
    sqlite_database_url: str,
) -> None:
    expected = {"journal_mode": "wal", "synchronous": 1, "foreign_keys": 1, "busy_timeout": 10000}

    with sync_engine(sqlite_database_url) as engine, engine.connect() as connection:
        seen = {p: connection.exec_driver_sql(f"PRAGMA {p}").scalar() for p in expected}
    assert seen == expected

    async_engine = make_async_engine(sqlite_database_url)
    try:
        async with async_engine.connect() as connection:
            seen = {p: (await connection.exec_driver_sql(f"PRAGMA {p}")).scalar() for p in expected}
    finally:
        await async_engine.dispose()
    assert seen == expected


# --- rows ---------------------------------------------------------------------------


def make_job(**fields: Any) -> Job:
    values: dict[str, Any] = {
        "question": "What is 6 × 7?",
        "strategy": {"kind": "self_consistency", "n": 8, "vote": "majority"},
    }
    return Job(**(values | fields))


def make_model_call(job_id: str, seq: int, key: str = "k", occurrence: int = 0) -> ModelCall:
    return ModelCall(
        job_id=job_id,
        seq=seq,
        key=key,
        occurrence=occurrence,
        role="small",
        request={"messages": [{"role": "user", "content": "hi"}]},
        response={"choices": [{"text": "hello"}]},
    )


async def test_job_span_and_model_call_round_trip(async_engine: AsyncEngine) -> None:
    sessions = make_sessionmaker(async_engine)
    started = datetime(2025, 3, 1, 12, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    strategy = {"kind": "best_of_n", "n": 4, "verifier": {"kind": "genrm", "threshold": 0.5}}
    request = {
        "messages": [{"role": "user", "content": "Résous: 2+2 — réponse ✓"}],
        "n": 4,
        "temperature": 0.7,
        "stop": ["\n\n"],
        "logprobs": True,
    }
    response = {
        "model": "qwen",
        "choices": [{"text": "4", "logprobs": [-0.01, -1.5e-7]}, {"text": None}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3},
        "emulated_n": False,
    }
    attempts = [{"endpoint": "http://a:8000", "status": 503}, {"endpoint": "http://b:8000"}]

    async with sessions() as session:
        job = make_job(strategy=strategy, budget={"tokens": 10_000}, seed=2**40, started_at=started)
        session.add(job)
        await session.flush()
        session.add(
            Span(job_id=job.id, seq=0, kind="job", name="job", attributes={"depth": [1, 2]})
        )
        session.add(
            ModelCall(
                job_id=job.id,
                seq=0,
                key="a" * 64,
                occurrence=0,
                role="small",
                request=request,
                response=response,
                attempts=attempts,
                latency_ms=12.5,
                prompt_tokens=12,
                completion_tokens=3,
                cost=0.0001,
            )
        )
        await session.commit()
        job_id = job.id

    async with sessions() as session:
        loaded = await session.get_one(Job, job_id)
        span = (await session.scalars(select(Span).where(Span.job_id == job_id))).one()
        call = (await session.scalars(select(ModelCall).where(ModelCall.job_id == job_id))).one()

    assert loaded.strategy == strategy
    assert loaded.budget == {"tokens": 10_000}
    assert loaded.roles == {}
    assert loaded.result is None
    assert loaded.seed == 2**40
    assert loaded.status == "queued"
    # Aware UTC on both backends, whatever offset went in.
    assert loaded.started_at == started
    assert loaded.started_at is not None and loaded.started_at.tzinfo == UTC
    assert loaded.created_at.tzinfo == UTC
    assert span.attributes == {"depth": [1, 2]}
    assert span.start_ts.tzinfo == UTC
    assert call.request == request
    assert call.response == response
    assert call.attempts == attempts
    assert (call.latency_ms, call.prompt_tokens, call.completion_tokens) == (12.5, 12, 3)
    assert isinstance(call.id, int)


async def test_naive_datetimes_are_refused(async_engine: AsyncEngine) -> None:
    async with make_sessionmaker(async_engine)() as session:
        session.add(make_job(started_at=datetime(2025, 1, 1, 12, 0)))
        with pytest.raises(StatementError, match="naive datetime"):
            await session.commit()


async def test_timestamps_sort_in_time_order_across_offsets(async_engine: AsyncEngine) -> None:
    # 10:00+02:00 is earlier than 09:00 UTC; SQLite compares the stored text.
    early = datetime(2025, 1, 1, 10, 0, tzinfo=timezone(timedelta(hours=2)))
    late = datetime(2025, 1, 1, 9, 0, tzinfo=UTC)
    async with make_sessionmaker(async_engine)() as session:
        session.add_all(
            [make_job(id="late", created_at=late), make_job(id="early", created_at=early)]
        )
        await session.commit()
        ordered = await session.scalars(select(Job.id).order_by(Job.created_at))
        assert list(ordered) == ["early", "late"]
        before_nine = await session.scalars(select(Job.id).where(Job.created_at < late))
        assert list(before_nine) == ["early"]


# name -> (two rows that collide, PostgreSQL's constraint name, SQLite's column list)
UNIQUE_CASES: dict[str, tuple[Callable[[str], list[Base]], str, str]] = {
    "journal key": (
        lambda job: [make_model_call(job, 0, "k", 0), make_model_call(job, 1, "k", 0)],
        "uq_model_calls_key",
        "model_calls.job_id, model_calls.key, model_calls.occurrence",
    ),
    "journal seq": (
        lambda job: [make_model_call(job, 0, "k", 0), make_model_call(job, 0, "k", 1)],
        "uq_model_calls_seq",
        "model_calls.job_id, model_calls.seq",
    ),
    "span seq": (
        lambda job: [
            Span(job_id=job, seq=3, kind="span", name="a"),
            Span(job_id=job, seq=3, kind="span", name="b"),
        ],
        "uq_spans_job_seq",
        "spans.job_id, spans.seq",
    ),
    "idempotency key": (
        lambda job: [make_job(idempotency_key="idem-1"), make_job(idempotency_key="idem-1")],
        "uq_jobs_tenant_idempotency",
        "jobs.tenant, jobs.idempotency_key",
    ),
    "api key hash": (
        lambda job: [ApiKey(tenant="a", key_hash="h"), ApiKey(tenant="b", key_hash="h")],
        "uq_api_keys_key_hash",
        "api_keys.key_hash",
    ),
}


@pytest.mark.parametrize("case", list(UNIQUE_CASES))
async def test_unique_constraints_hold(async_engine: AsyncEngine, case: str) -> None:
    rows, pg_name, sqlite_columns = UNIQUE_CASES[case]
    async with make_sessionmaker(async_engine)() as session:
        job = make_job()
        session.add(job)
        await session.commit()
        first, second = rows(job.id)
        session.add(first)
        await session.commit()

        session.add(second)
        with pytest.raises(IntegrityError) as caught:
            await session.commit()
        await session.rollback()
    # The named constraint fired, not some other one.
    expected = sqlite_columns if async_engine.dialect.name == "sqlite" else pg_name
    assert expected in str(caught.value.orig)


async def test_what_unique_constraints_allow(async_engine: AsyncEngine) -> None:
    async with make_sessionmaker(async_engine)() as session:
        one, two = make_job(), make_job()
        session.add_all(
            [
                one,
                two,
                # No idempotency key is never a duplicate; a key is per tenant.
                make_job(),
                make_job(idempotency_key="idem"),
                make_job(idempotency_key="idem", tenant="other"),
            ]
        )
        await session.flush()
        # The same journal key, occurrence and seq in two jobs.
        session.add_all([make_model_call(one.id, 0), make_model_call(two.id, 0)])
        await session.commit()
        assert await session.scalar(select(func.count()).select_from(ModelCall)) == 2


async def test_deleting_a_job_cascades_to_its_trace_and_journal(async_engine: AsyncEngine) -> None:
    async with make_sessionmaker(async_engine)() as session:
        parent, other = make_job(), make_job()
        session.add_all([parent, other])
        await session.flush()
        child = make_job(parent_job_id=parent.id, fork_point=1, replay_mode="strict")
        session.add(child)
        for job in (parent, other):
            session.add_all(
                [
                    Span(job_id=job.id, seq=0, kind="job", name="job"),
                    Span(job_id=job.id, seq=1, kind="model_call", name="small"),
                    make_model_call(job.id, 0),
                    make_model_call(job.id, 1, occurrence=1),
                ]
            )
        await session.commit()
        parent_id, other_id, child_id = parent.id, other.id, child.id

        # A bulk DELETE: the database cascades, not the ORM (the models have no relationships).
        await session.execute(sql_delete(Job).where(Job.id == parent_id))
        await session.commit()

        async def count(model: type[Span] | type[ModelCall], job_id: str) -> int | None:
            return await session.scalar(
                select(func.count()).select_from(model).where(model.job_id == job_id)
            )

        assert (await count(Span, parent_id), await count(ModelCall, parent_id)) == (0, 0)
        assert (await count(Span, other_id), await count(ModelCall, other_id)) == (2, 2)
        # A fork outlives its parent, detached.
        assert await session.scalar(select(Job.parent_job_id).where(Job.id == child_id)) is None


async def test_a_journal_entry_needs_its_job(async_engine: AsyncEngine) -> None:
    async with make_sessionmaker(async_engine)() as session:
        session.add(make_model_call("no-such-job", 0))
        with pytest.raises(IntegrityError):
            await session.commit()


async def test_sessions_keep_committed_rows_readable(async_engine: AsyncEngine) -> None:
    async with make_sessionmaker(async_engine)() as session:
        job = make_job()
        session.add(job)
        await session.commit()
        await session.execute(update(Job).where(Job.id == job.id).values(attempts=5))
        await session.commit()
    # expire_on_commit=False: no lazy reload (impossible outside the session) is needed.
    assert job.question == "What is 6 × 7?"
