"""The ``ponder`` command.

    ponder solve "QUESTION" [--strategy NAME] [--param k=v ...] [--budget-tokens N] [--json]
    ponder resume JOB_ID            run a job again; its journal pays for nothing twice
    ponder replay JOB_ID [--strict | --live] [--fork-from N] [--param k=v ...] [--json]
    ponder trace JOB_ID [--json]    the span tree with tokens and latency per node
    ponder strategies [--json]
    ponder db upgrade | downgrade REV | current
    ponder simulate [--port P] [--script FILE.json]
    ponder models prepare           assemble and verify the embedded model files
    ponder keys create --tenant T   a new API key for tenant T (printed once, stored hashed)
    ponder worker [--concurrency N] [--queues high,default,low] [--reaper]
                                    a Celery worker (broker: PONDER_BROKER_URL)
    ponder serve [--host H] [--port P]   embedded mode: API + a worker + the embedded models
    ponder eval --dataset FILE.jsonl --strategy SPEC [--strategy SPEC ...] [--limit N]
                [--budget-tokens B | --match-budget] [--url SERVER] [--out DIR]
    ponder eval --replay RESULTS.json [-p key=value ...]
                                    strategies compared on a dataset (docs/eval.md)

Exit codes: 0 done, 1 the job itself failed, 2 bad input or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

from app import render
from core.errors import PonderError
from core.settings import Settings


def _kv(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ponder", description="Agentic reasoning orchestration.")
    sub = parser.add_subparsers(dest="command", required=True)

    solve = sub.add_parser("solve", help="solve a problem in-process and keep its trace")
    solve.add_argument("question")
    solve.add_argument("--strategy", default=None, help="strategy kind (see `ponder strategies`)")
    solve.add_argument("--param", "-p", action="append", type=_kv, default=[], metavar="K=V")
    solve.add_argument("--role", action="append", type=_kv, default=[], metavar="ROLE=POOL")
    solve.add_argument("--budget-tokens", type=int, default=None)
    solve.add_argument("--budget-calls", type=int, default=None)
    solve.add_argument("--budget-seconds", type=float, default=None)
    solve.add_argument("--budget-cost", type=float, default=None)
    solve.add_argument("--seed", type=int, default=None)
    solve.add_argument("--json", action="store_true")

    resume = sub.add_parser("resume", help="run an unfinished or failed job again")
    resume.add_argument("job_id")
    resume.add_argument("--json", action="store_true")

    replay = sub.add_parser("replay", help="re-run a job from its journal")
    mode = replay.add_mutually_exclusive_group()
    mode.add_argument("--strict", action="store_true", help="fail on any call not journaled")
    mode.add_argument("--live", action="store_true", help="call the model on a journal miss")
    replay.add_argument("job_id")
    replay.add_argument("--fork-from", type=int, default=None, metavar="N")
    replay.add_argument("--param", "-p", action="append", type=_kv, default=[], metavar="K=V")
    replay.add_argument("--json", action="store_true")

    trace = sub.add_parser("trace", help="print a job's span tree")
    trace.add_argument("job_id")
    trace.add_argument("--json", action="store_true")

    strategies = sub.add_parser("strategies", help="list strategies and their parameters")
    strategies.add_argument("--json", action="store_true")

    db = sub.add_parser("db", help="database migrations")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade").add_argument("revision", nargs="?", default="head")
    db_sub.add_parser("downgrade").add_argument("revision")
    db_sub.add_parser("current")

    sim = sub.add_parser("simulate", help="run the scripted OpenAI-compatible model simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8100)
    sim.add_argument("--script", default=None, help="simulator config (JSON)")

    models = sub.add_parser("models", help="embedded models")
    models.add_argument("action", choices=["prepare"])

    keys = sub.add_parser("keys", help="API keys of the REST API")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key; it is printed once, never again")
    create.add_argument("--tenant", required=True, help="the tenant whose jobs the key sees")

    worker = sub.add_parser("worker", help="run a Celery worker (broker: PONDER_BROKER_URL)")
    worker.add_argument(
        "--concurrency", "-c", type=int, default=None, help="worker processes (default: cores)"
    )
    worker.add_argument(
        "--queues",
        "-Q",
        default="high,default,low",
        help="priorities to take jobs from, most urgent first (default: high,default,low)",
    )
    worker.add_argument("--pool", choices=["prefork", "threads", "solo"], default="prefork")
    worker.add_argument(
        "--reaper", action="store_true", help="also run the reaper (re-enqueues orphaned jobs)"
    )
    worker.add_argument("--loglevel", default="INFO")

    serve = sub.add_parser("serve", help="embedded mode: the API, a worker and the models")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--worker-concurrency", type=int, default=2, metavar="N")
    from bench import suite as bench_suite

    bench_suite.add_parser(sub)
    from app import calibrate_command

    calibrate_command.add_parser(sub)
    _eval_parser(sub)
    return parser


def _eval_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ev = sub.add_parser("eval", help="compare strategies on a dataset (docs/eval.md)")
    ev.add_argument("--dataset", default=None, metavar="FILE.jsonl", help="id, question, answer")
    ev.add_argument(
        "--strategy",
        action="append",
        default=[],
        metavar="SPEC",
        help='JSON (\'{"kind":"self_consistency","n":4}\') or a kind; repeat to compare',
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
    ev.add_argument("--replay", default=None, metavar="RESULTS.json")
    ev.add_argument("--param", "-p", action="append", type=_kv, default=[], metavar="K=V")


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        settings = Settings()
    except Exception as exc:  # pydantic's ValidationError on a bad PONDER_* variable
        print(f"ponder: bad settings: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        code = _dispatch(args, settings)
    except PonderError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"error": exc.to_dict()}, default=str))
        print(f"ponder: {exc.message}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("ponder: interrupted", file=sys.stderr)
        code = 130
    raise SystemExit(code)


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    from app import commands

    if args.command == "solve":
        return asyncio.run(commands.solve(args, settings))
    if args.command == "resume":
        return asyncio.run(commands.resume(args, settings))
    if args.command == "replay":
        return asyncio.run(commands.replay(args, settings))
    if args.command == "trace":
        return asyncio.run(commands.trace(args, settings))
    if args.command == "strategies":
        return render.strategies(args.json)
    if args.command == "db":
        return commands.db(args, settings)
    if args.command == "simulate":
        return commands.simulate(args)
    if args.command == "models":
        return commands.models_prepare(settings)
    if args.command == "keys":
        return asyncio.run(commands.keys_create(args, settings))
    if args.command == "worker":
        return commands.worker(args, settings)
    if args.command == "serve":
        return commands.serve(args, settings)
    if args.command == "bench":
        from bench import suite as bench_suite

        return bench_suite.run(args, settings)
    if args.command == "calibrate":
        from app import calibrate_command

        return asyncio.run(calibrate_command.run(args, settings))
    if args.command == "eval":
        from evals import command as eval_command

        return asyncio.run(eval_command.run(args, settings))
    raise AssertionError(args.command)


if __name__ == "__main__":
    main()
