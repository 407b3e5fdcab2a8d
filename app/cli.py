"""The ``ponder`` command: one table of commands, each loaded only when it runs.

    ponder solve "QUESTION" [--strategy NAME] [--param k=v ...] [--budget-tokens N] [--json]
    ponder resume JOB_ID            run a job again; its journal pays for nothing twice
    ponder replay JOB_ID [--strict | --live] [--fork-from N] [--param k=v ...] [--json]
    ponder trace JOB_ID [--json]    the span tree with tokens and latency per node
    ponder strategies [--json]
    ponder db upgrade | downgrade REV | current
    ponder simulate [--port P] [--script FILE.json]
    ponder models prepare           assemble and verify the embedded model files
    ponder keys create --tenant T   a new API key for tenant T (printed once, stored hashed)
    ponder keys list [--tenant T] [--json]    ids, tenants, dates; never the keys
    ponder keys revoke KEY_ID       refused from the next request on
    ponder worker [--concurrency N] [--queues high,default,low] [--reaper]
                                    a Celery worker (broker: PONDER_BROKER_URL)
    ponder serve [--host H] [--port P] [--insecure-no-auth]
                                    API + a worker (+ the embedded models without pools)
    ponder eval ...                 strategies compared on a dataset (docs/eval.md)
    ponder calibrate KIND ...       thresholds fitted from journals (docs/calibration.md)
    ponder bench [--quick] ...      the benchmark suite (a checkout only; bench/README.md)

Exit codes: 0 done, 1 the job itself failed, 2 bad input or configuration.

Every command is one row of ``COMMANDS``: its help line, the function that adds its
arguments and the function that runs it, both named ``"module:function"`` and imported
only when that command is chosen. So ``ponder --help`` imports no command at all, and
the layers above ``app`` (``bench``) or with heavy imports (``evals``: matplotlib) are
never loaded by another command. A row's ``needs`` turns a missing module into one
sentence saying what to install.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, cast

from core.errors import ConfigError, PonderError
from core.settings import Settings
from core.settings_errors import BadSettings, load_settings

Handler = Callable[[argparse.Namespace, Settings], int | Coroutine[Any, Any, int]]


@dataclass(frozen=True)
class Needs:
    """What a command needs beyond a plain install, and the sentence that says so."""

    modules: tuple[str, ...]
    """Top-level modules whose absence this explains (any other ImportError is a bug)."""
    sentence: str


@dataclass(frozen=True)
class Command:
    help: str
    arguments: str
    """``"module:function"``: ``function(parser)`` adds the command's arguments."""
    handler: str
    """``"module:function"``: ``function(args, settings)`` returns the exit code (or a
    coroutine that does)."""
    needs: Needs | None = None


CHECKOUT = Needs(
    ("bench", "tests", "pytest", "_shared"),
    "ponder bench runs only from a checkout of the Ponder repository, since it uses its "
    "bench/ and tests/ directories: run it there after pip install -e '.[test]'",
)
EVALS = Needs(
    ("evals", "matplotlib"),
    "this command needs Ponder's evals package and matplotlib, which a full install "
    "has: pip install --force-reinstall ponder (or run it from a checkout)",
)

COMMANDS: dict[str, Command] = {
    "solve": Command(
        "solve a problem in-process and keep its trace",
        "app.commands:solve_arguments",
        "app.commands:solve",
    ),
    "resume": Command(
        "run an unfinished or failed job again",
        "app.commands:job_arguments",
        "app.commands:resume",
    ),
    "replay": Command(
        "re-run a job from its journal",
        "app.commands:replay_arguments",
        "app.commands:replay",
    ),
    "trace": Command("print a job's span tree", "app.commands:job_arguments", "app.commands:trace"),
    "strategies": Command(
        "list strategies and their parameters",
        "app.commands:json_arguments",
        "app.commands:strategies",
    ),
    "db": Command("database migrations", "app.commands:db_arguments", "app.commands:db"),
    "simulate": Command(
        "run the scripted OpenAI-compatible model simulator",
        "app.commands:simulate_arguments",
        "app.commands:simulate",
    ),
    "models": Command(
        "embedded models (needs the embedded extra)",
        "app.commands:models_arguments",
        "app.commands:models",
    ),
    "keys": Command("API keys of the REST API", "app.commands:keys_arguments", "app.commands:keys"),
    "worker": Command(
        "run a Celery worker (broker: PONDER_BROKER_URL)",
        "app.commands:worker_arguments",
        "app.commands:worker",
    ),
    "serve": Command(
        "the API and a worker on one machine (embedded models when no pools are set)",
        "app.commands:serve_arguments",
        "app.commands:serve",
    ),
    "eval": Command(
        "compare strategies on a dataset (docs/eval.md)",
        "app.commands:eval_arguments",
        "evals.command:run",
        EVALS,
    ),
    "calibrate": Command(
        "fit thresholds from recorded journals (docs/calibration.md)",
        "app.calibrate_command:add_arguments",
        "app.calibrate_command:run",
        EVALS,
    ),
    "bench": Command(
        "run the benchmark suite against the simulator (checkout only; bench/README.md)",
        "bench.suite:add_arguments",
        "bench.suite:run",
        CHECKOUT,
    ),
}


class MissingPackage(ConfigError):
    code = "missing_package"


def _explain(command: Command, exc: ModuleNotFoundError) -> MissingPackage | None:
    top = (exc.name or "").split(".")[0]
    if command.needs is None or top not in command.needs.modules:
        return None
    return MissingPackage(f"{command.needs.sentence} (missing module {top!r})", module=top)


def _load(command: Command, target: str) -> Any:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        explained = _explain(command, exc)
        if explained is None:
            raise
        raise explained from None
    return getattr(module, attr)


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The ``ponder`` parser; only ``selected``'s arguments are loaded (and its module)."""
    parser = argparse.ArgumentParser(
        prog="ponder",
        description="Agentic reasoning orchestration.",
        epilog="Exit codes: 0 done, 1 the job itself failed, 2 bad input or configuration.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        child = sub.add_parser(name, help=command.help, description=command.help)
        if name == selected:
            _load(command, command.arguments)(child)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    words = list(sys.argv[1:] if argv is None else argv)
    selected = words[0] if words and words[0] in COMMANDS else None
    return build_parser(selected).parse_args(words)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the parsed command; a module its ``needs`` name as missing becomes one sentence."""
    command = COMMANDS[args.command]
    try:
        handler = cast(Handler, _load(command, command.handler))
        result = handler(args, settings)
        if inspect.iscoroutine(result):
            return int(asyncio.run(result))
        return int(cast(int, result))
    except ModuleNotFoundError as exc:
        explained = _explain(command, exc)
        if explained is None:
            raise
        raise explained from None


def main(argv: Sequence[str] | None = None) -> None:
    try:
        args = parse_args(argv)
        settings = load_settings()
    except BadSettings as exc:
        for sentence in exc.sentences:
            print(f"ponder: bad settings: {sentence}", file=sys.stderr)
        raise SystemExit(2) from None
    except PonderError as exc:  # a command's module is missing: one sentence
        print(f"ponder: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        code = run(args, settings)
    except PonderError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"error": exc.to_dict()}, default=str))
        print(f"ponder: {exc.message}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("ponder: interrupted", file=sys.stderr)
        code = 130
    raise SystemExit(code)


if __name__ == "__main__":
    main()
