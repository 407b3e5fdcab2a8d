"""``core.jobs.submit``, the one way a job is created (API, CLI, evals), and
``core.runtime.Runtime``, the one runtime builder (API, worker, CLI): over SQLite and
PostgreSQL, with no HTTP in between."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.executor import InProcessExecutor
from app.api.main import create_app
from app.api.settings import ApiSettings
from core.budget import BudgetSpec
from core.db import repo
from core.db.models import Job
from core.errors import IdempotencyConflict, InvalidInput
from core.jobs import Submitted, create_replay, submit, submit_job
from core.runtime import Runtime
from core.simulator.server import Simulator
from tests.fixtures.runtime import simulator_settings

QUESTION = "What is 2 + 3?"
DIRECT = {"kind": "direct"}


async def count_jobs(rt: Runtime) -> int:
    async with rt.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(Job)) or 0)


async def test_a_job_is_written_queued_with_what_was_asked(runtime: Runtime) -> None:
    submitted = await submit(
        runtime.sessions,
        runtime.pools,
        question=f"  {QUESTION} ",
        strategy={"kind": "self_consistency", "n": 3},
        budget={"max_tokens": 500},
        seed=11,
        tenant="acme",
        priority="high",
    )
    assert submitted.created
    async with runtime.sessions() as session:
        job = await repo.get_job(session, submitted.job.id)
    assert job is not None
    assert (job.status, job.question, job.seed, job.tenant) == ("queued", QUESTION, 11, "acme")
    assert (job.priority, job.budget) == ("high", {"max_tokens": 500})
    assert job.strategy["kind"] == "self_consistency" and job.strategy["n"] == 3
    assert job.roles["small"]["pool"] == "small"
    # The id-only form writes the same way, with the column defaults.
    job_id = await submit_job(runtime.sessions, runtime.pools, question=QUESTION, strategy=DIRECT)
    async with runtime.sessions() as session:
        plain = await repo.get_job(session, job_id)
    assert plain is not None and plain.priority == "default" and plain.request_hash is None
    # A replay keeps its parent's tenant and budget, in the queue class it is given.
    child_id = await create_replay(
        runtime.sessions, runtime.pools, submitted.job.id, mode="live", priority="low"
    )
    async with runtime.sessions() as session:
        child = await repo.get_job(session, child_id)
    assert child is not None and child.parent_job_id == submitted.job.id
    assert (child.priority, child.tenant, child.budget) == ("low", "acme", {"max_tokens": 500})
    with pytest.raises(InvalidInput) as bad:
        await create_replay(runtime.sessions, runtime.pools, job_id, priority="soon")
    assert bad.value.field == "priority"


async def test_an_idempotency_key_returns_the_earlier_job_or_refuses_another_request(
    runtime: Runtime,
) -> None:
    async def again(seed: int, question: str = QUESTION) -> Submitted:
        return await submit(
            runtime.sessions,
            runtime.pools,
            question=question,
            strategy={"kind": "direct"},
            seed=seed,
            idempotency_key="k1",
        )

    first = await again(1)
    # The same request as validated (whitespace stripped) is a retry.
    retry = await again(1, f" {QUESTION}")
    assert first.created and not retry.created and not retry.concurrent
    assert retry.job.id == first.job.id
    with pytest.raises(IdempotencyConflict) as conflict:
        await again(2)
    assert conflict.value.details["field"] == "idempotency_key"
    assert conflict.value.details["job_id"] == first.job.id
    # Keys are per tenant.
    other = await submit(
        runtime.sessions,
        runtime.pools,
        question=QUESTION,
        strategy=DIRECT,
        seed=1,
        tenant="other",
        idempotency_key="k1",
    )
    assert other.created and other.job.id != first.job.id
    assert await count_jobs(runtime) == 2


async def test_concurrent_submissions_with_one_key_write_one_job(runtime: Runtime) -> None:
    results = await asyncio.gather(
        *(
            submit(
                runtime.sessions,
                runtime.pools,
                question=QUESTION,
                strategy=DIRECT,
                seed=3,
                idempotency_key="race",
            )
            for _ in range(6)
        )
    )
    assert len({r.job.id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert await count_jobs(runtime) == 1


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"question": "  "}, "question"),
        ({"strategy": {"kind": "nope"}}, "strategy.kind"),
        ({"budget": {"max_tokens": 0}}, "budget.max_tokens"),
        ({"priority": "urgent"}, "priority"),
        ({"roles": {"small": "nowhere"}}, "roles.small"),
        ({"idempotency_key": "x" * 129}, "idempotency_key"),
        ({"idempotency_key": "tab\there"}, "idempotency_key"),
    ],
)
async def test_bad_input_names_its_field_and_writes_nothing(
    runtime: Runtime, fields: dict[str, object], field: str
) -> None:
    given: dict[str, object] = {"question": QUESTION, "strategy": DIRECT, **fields}
    with pytest.raises(InvalidInput) as bad:
        await submit(runtime.sessions, runtime.pools, **given)  # type: ignore[arg-type]
    assert bad.value.field == field
    assert await count_jobs(runtime) == 0


async def test_the_callers_hooks_limit_the_budget_and_admit_in_the_insert_transaction(
    runtime: Runtime,
) -> None:
    def limit_budget(budget: BudgetSpec) -> BudgetSpec:
        return budget.model_copy(update={"max_calls": 4})

    seen: list[bool] = []

    async def admit(session: AsyncSession) -> None:
        seen.append(session.in_transaction())

    submitted = await submit(
        runtime.sessions,
        runtime.pools,
        question=QUESTION,
        strategy=DIRECT,
        budget={"max_tokens": 100},
        limit_budget=limit_budget,
        admit=admit,
    )
    assert seen == [True]
    assert submitted.job.budget == {"max_tokens": 100, "max_calls": 4}

    async def refuse(session: AsyncSession) -> None:
        raise InvalidInput("over quota", field="tenant")

    with pytest.raises(InvalidInput):
        await submit(runtime.sessions, runtime.pools, question="q", strategy=DIRECT, admit=refuse)
    assert await count_jobs(runtime) == 1


async def test_the_runtime_builds_exactly_the_given_pools_on_one_http_client(
    simulator: Simulator, sqlite_database_url: str, tmp_path: Path
) -> None:
    settings = simulator_settings(simulator.url, sqlite_database_url, tmp_path)
    # As the API and the worker build it: every given pool, no roles, no embedded models.
    only_small = {"small": settings.pools["small"]}
    async with Runtime(settings, pools=only_small) as rt:
        assert sorted(rt.pools) == ["small"] and rt.pool_settings == only_small
        assert rt.http is not None and rt.sync_engine is not None
        await rt.check_pools(["small"])
    assert rt.http.is_closed
    # No pools: no clients, no HTTP client, and never the embedded models; a job that
    # needs a model is refused before anything is written.
    async with Runtime(settings, pools={}) as bare:
        assert len(bare.pools) == 0 and bare.http is None and bare.embedded is None
        with pytest.raises(InvalidInput) as unbound:
            await submit_job(bare.sessions, bare.pools, question=QUESTION, strategy=DIRECT)
        assert unbound.value.field == "roles.small"
        assert await count_jobs(bare) == 0


@pytest.mark.postgres
async def test_the_api_opens_the_same_runtime_as_the_worker_and_the_cli(
    simulator: Simulator, clean_pg_database_url: str, tmp_path: Path
) -> None:
    # When the API built its own, its copy drifted: its trace engine waited for the WAL.
    settings = simulator_settings(simulator.url, clean_pg_database_url, tmp_path)
    api = ApiSettings(_env_file=None)  # type: ignore[call-arg]
    app = create_app(settings, executor=InProcessExecutor(), api_settings=api)
    async with app.router.lifespan_context(app):
        state = app.state.ponder
        assert sorted(state.pools) == ["large", "small"]
        assert state.pool_settings == settings.pools
        with state.sync_engine.connect() as connection:
            assert connection.execute(text("SHOW synchronous_commit")).scalar() == "off"
    async with Runtime(settings, pools=settings.pools) as rt:
        assert rt.sync_engine is not None
        with rt.sync_engine.connect() as connection:
            assert connection.execute(text("SHOW synchronous_commit")).scalar() == "off"
