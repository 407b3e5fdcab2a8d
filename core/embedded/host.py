"""Child-process entry point that serves the embedded models over HTTP.

    python -m core.embedded.host --model small=data/models/small.gguf \
        --model large=data/models/large.gguf --threads 2 --slots 16 --context 32768

Each model gets its own llama.cpp server (``xllamacpp.Server``) on 127.0.0.1, all in
this one process: two servers in two processes that decode at once fight over the
two cores and collapse to a few tokens per second (see docs/embedded.md for the
measurements that chose this layout).

Protocol with ``core.embedded.manager``:

* stdout carries exactly one line, a JSON object ``{"role": "http://127.0.0.1:port"}``,
  once every model is loaded and listening. Everything the native code prints goes to
  stderr, which the manager points at a log file.
* The process exits when its stdin reaches end-of-file (the parent closed the pipe or
  died), on SIGTERM/SIGINT, and, on Linux, when the parent dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TextIO

MIN_SLOT_CONTEXT = 2048
"""Smallest KV budget per slot: a prompt plus a few hundred tokens of reasoning."""

RAM_CACHE_MIB = 512
"""Host-RAM prompt cache per model. llama.cpp defaults to 8 GiB, too much for a laptop."""

_PR_SET_PDEATHSIG = 1
_EXIT_GRACE_S = 5.0


@dataclass(frozen=True)
class HostedModel:
    role: str
    path: Path
    alias: str


def slot_context(context: int, slots: int) -> int:
    """The ``n_ctx`` to ask llama.cpp for so every slot gets ``MIN_SLOT_CONTEXT`` tokens.

    llama.cpp splits ``n_ctx`` evenly between its slots (the KV cache is not unified),
    so 16 slots in 16384 tokens would leave 1024 per request.
    """
    return max(context, slots * MIN_SLOT_CONTEXT)


def server_params(model: HostedModel, threads: int, slots: int, context: int) -> Any:
    """The ``xllamacpp.CommonParams`` for one model. Imported lazily: the wheel is optional."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(model.path)
    params.model_alias = {model.alias}
    params.port = 0  # the OS picks a free port: no race between choosing and binding
    params.n_parallel = slots
    params.n_ctx = slot_context(context, slots)
    # A private KV budget per slot keeps one long request from starving the others
    # and makes "too long" a clear per-request 400 instead of a failure under load.
    params.kv_unified = False
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.cache_ram_mib = RAM_CACHE_MIB
    params.endpoint_metrics = True
    params.ui = False
    return params


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        # SIGKILL, not SIGTERM: once the parent is gone nobody waits for a clean exit,
        # and a handler could hang in native code.
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    # The parent may have died before prctl took effect: we would then be adopted.
    if parent_pid and os.getppid() != parent_pid:
        os._exit(0)


def _watch_stdin() -> None:
    """Block until stdin closes, then ask the main thread to exit."""
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGTERM)


def _exit_on_signal(signum: int, frame: FrameType | None) -> NoReturn:
    raise SystemExit(0)


def _hard_exit_later() -> None:
    # Native server threads join on shutdown; never let a stuck one keep us alive.
    timer = threading.Timer(_EXIT_GRACE_S, os._exit, args=(0,))
    timer.daemon = True
    timer.start()


def _parse_model(value: str) -> tuple[str, Path]:
    role, sep, path = value.partition("=")
    if not sep or not role or not path:
        raise argparse.ArgumentTypeError(f"expected ROLE=PATH, got {value!r}")
    return role, Path(path)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m core.embedded.host", description="Serve the embedded GGUF models."
    )
    parser.add_argument(
        "--model",
        action="append",
        type=_parse_model,
        required=True,
        metavar="ROLE=PATH",
        help="a model to serve (repeatable)",
    )
    parser.add_argument(
        "--alias",
        action="append",
        default=[],
        metavar="ROLE=NAME",
        help="model name the server reports (default: the catalog name)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--context", type=int, default=16384)
    parser.add_argument(
        "--parent-pid", type=int, default=0, help="exit as soon as this process is gone"
    )
    parser.add_argument(
        "--watch-stdin",
        action="store_true",
        help="exit when stdin reaches end-of-file (the manager's pipe)",
    )
    return parser.parse_args(argv)


def _aliases(roles: list[str], given: list[str]) -> dict[str, str]:
    from core.embedded.catalog import CATALOG

    aliases = {role: CATALOG[role].name if role in CATALOG else role for role in roles}
    for item in given:
        role, _, name = item.partition("=")
        aliases[role] = name
    return aliases


def serve(models: list[HostedModel], threads: int, slots: int, context: int, ready: TextIO) -> None:
    """Start every model, announce their URLs on ``ready`` and serve until told to stop."""
    import xllamacpp

    servers: dict[str, Any] = {}
    try:
        for model in models:
            try:
                servers[model.role] = xllamacpp.Server(
                    server_params(model, threads, slots, context)
                )
            except RuntimeError as exc:
                # llama.cpp has already logged the cause just above; a traceback adds nothing.
                sys.stderr.write(
                    f"ponder: cannot serve the {model.role!r} model {model.path}: {exc}\n"
                )
                raise SystemExit(1) from exc
        urls = {role: server.listening_address for role, server in servers.items()}
        ready.write(json.dumps(urls) + "\n")
        ready.flush()
        while True:  # until a handled signal raises SystemExit
            signal.pause()
    finally:
        _hard_exit_later()
        # Destroying a Server stops its HTTP listener and joins its decode loop.
        servers.clear()


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    # Before xllamacpp loads libgomp, which reads it once. Measured (docs/embedded.md):
    # with the default spin-waiting, two decode threads on two cores drop from ~35 to
    # ~2 tokens/s as soon as any other process wants a core; sleeping at barriers costs
    # a few percent on an idle machine and keeps ~15 tokens/s under contention.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _die_with_parent(args.parent_pid)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    # The announcement keeps the real stdout; llama.cpp prints some lines to stdout,
    # which must not interleave with it, so fd 1 becomes a copy of stderr.
    ready = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    if args.watch_stdin:
        threading.Thread(target=_watch_stdin, name="stdin-watch", daemon=True).start()
    roles = [role for role, _ in args.model]
    aliases = _aliases(roles, args.alias)
    models = [HostedModel(role, path, aliases[role]) for role, path in args.model]
    serve(models, args.threads, args.slots, args.context, ready)


if __name__ == "__main__":
    main()
