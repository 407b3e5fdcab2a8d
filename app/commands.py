"""The CLI's commands: thin wrappers over core that format what they get back."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Literal

from app import render
from core.db import repo
from core.errors import NotFound
from core.jobs import (
    create_replay,
    resolve_job_id,
    submit_job,
    validate_budget,
    validate_question,
)
from core.runner import RunOutcome, validate_spec
from core.runtime import Runtime
from core.settings import Settings
from strategies.registry import roles_used


def _budget(args: argparse.Namespace) -> dict[str, Any]:
    budget: dict[str, Any] = {}
    for name in ("tokens", "calls", "seconds", "cost"):
        value = getattr(args, f"budget_{name}")
        if value is not None:
            budget[f"max_{name}"] = value
    return budget


async def solve(args: argparse.Namespace, settings: Settings) -> int:
    spec = {"kind": args.strategy or settings.default_strategy, **dict(args.param)}
    # Validate everything before starting any model: bad input fails in milliseconds.
    params = validate_spec(spec)
    validate_question(args.question)
    validate_budget(_budget(args))
    role_overrides = {str(k): str(v) for k, v in args.role}
    roles = roles_used(params) | {role_overrides.get(r, r) for r in roles_used(params)}
    async with Runtime(settings, roles=roles) as rt:
        await rt.check_pools(role_overrides.get(r, r) for r in roles_used(params))
        job_id = await submit_job(
            rt.sessions,
            rt.pools,
            question=args.question,
            strategy=spec,
            budget=_budget(args),
            roles=role_overrides,
            seed=args.seed,
        )
        outcome = await _run_with_progress(rt, job_id, quiet=args.json)
        return _report(outcome, args.json)


async def resume(args: argparse.Namespace, settings: Settings) -> int:
    async with Runtime(settings) as rt:
        job_id = await resolve_job_id(rt.sessions, args.job_id)
        async with rt.sessions() as session:
            job = await repo.get_job(session, job_id)
            assert job is not None
            pools_needed = {b["pool"] for b in job.roles.values()}
    async with Runtime(settings, roles=pools_needed) as rt:
        outcome = await _run_with_progress(rt, job_id, quiet=args.json)
        return _report(outcome, args.json)


async def replay(args: argparse.Namespace, settings: Settings) -> int:
    mode: Literal["strict", "live"] = "live" if args.live else "strict"
    async with Runtime(settings) as rt:
        parent_id = await resolve_job_id(rt.sessions, args.job_id)
        async with rt.sessions() as session:
            parent = await repo.get_job(session, parent_id)
            assert parent is not None
            pools_needed = {b["pool"] for b in parent.roles.values()}
    # Strict replay never calls a model, so it starts none.
    async with Runtime(settings, roles=pools_needed if mode == "live" else None) as rt:
        child_id = await create_replay(
            rt.sessions,
            rt.pools,
            parent_id,
            mode=mode,
            fork_from=args.fork_from,
            strategy_overrides=dict(args.param),
        )
        outcome = await _run_with_progress(rt, child_id, quiet=args.json)
        outcome.extra["parent_job_id"] = parent_id
        return _report(outcome, args.json)


async def trace(args: argparse.Namespace, settings: Settings) -> int:
    async with Runtime(settings) as rt:
        job_id = await resolve_job_id(rt.sessions, args.job_id)
        async with rt.sessions() as session:
            job = await repo.get_job(session, job_id)
            if job is None:
                raise NotFound(f"job {job_id} not found")
            spans = await repo.list_spans(session, job_id)
            calls = await repo.list_calls(session, job_id)
        if args.json:
            print(json.dumps(render.trace_json(job, spans, calls), default=str))
        else:
            render.trace_tree(job, spans)
    return 0


async def _run_with_progress(rt: Runtime, job_id: str, *, quiet: bool) -> RunOutcome:
    progress = render.Progress(job_id, enabled=not quiet)
    with progress:
        return await rt.runner.run(job_id, listeners=[progress.on_event])


def _report(outcome: RunOutcome, as_json: bool) -> int:
    if as_json:
        print(json.dumps(render.outcome_json(outcome), default=str))
    else:
        render.outcome(outcome)
    return 0 if outcome.status == "succeeded" else 1


def db(args: argparse.Namespace, settings: Settings) -> int:
    from core.db import migrate

    url = settings.resolved_database_url()
    if args.db_command == "upgrade":
        if url.startswith("sqlite"):
            migrate.ensure_schema(url)
        migrate.upgrade(url, args.revision)
        print(f"database at {migrate.current_revision(url)}")
    elif args.db_command == "downgrade":
        migrate.downgrade(url, args.revision)
        print(f"database at {migrate.current_revision(url)}")
    else:
        print(migrate.current_revision(url) or "empty (run `ponder db upgrade`)")
    return 0


def simulate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from core.simulator.config import SimulatorConfig, load_config
    from core.simulator.server import serve

    config = load_config(Path(args.script)) if args.script else SimulatorConfig()
    serve(config, args.host, args.port)
    return 0


def models_prepare(settings: Settings) -> int:
    from core.embedded.assemble import model_file

    cache = settings.embedded.cache_dir or (settings.data_dir / "models")
    for role in settings.embedded.roles:
        path = model_file(role, cache)
        print(f"{role}: {path} (verified)")
    return 0


def worker(args: argparse.Namespace, settings: Settings) -> int:
    from workers.launch import run_worker

    return run_worker(
        settings,
        concurrency=args.concurrency,
        queues=[q.strip() for q in args.queues.split(",") if q.strip()],
        pool=args.pool,
        reaper=args.reaper,
        loglevel=args.loglevel,
    )


def serve(args: argparse.Namespace, settings: Settings) -> int:
    from workers.launch import serve_embedded

    return serve_embedded(
        settings, host=args.host, port=args.port, worker_concurrency=args.worker_concurrency
    )


async def keys_create(args: argparse.Namespace, settings: Settings) -> int:
    from core.keys import create_key, validate_tenant

    validate_tenant(args.tenant)  # before touching the database
    async with Runtime(settings) as rt:
        key = await create_key(rt.sessions, args.tenant)
    # The only copy: the database keeps its hash. Notes go to stderr so that
    # `KEY=$(ponder keys create --tenant t)` captures the key alone.
    print(key)
    print(
        f"ponder: API key for tenant {args.tenant!r} created; it is shown only this once.",
        file=sys.stderr,
    )
    return 0
