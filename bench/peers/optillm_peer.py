"""OptiLLM's proxy in front of the simulator, doing the same work as Ponder.

Runs with the peers' venv (``.bench-peers/bin/python``), never Ponder's; starts the
``optillm`` proxy (a Flask server) as a child process pointed at the simulator, sends
chat requests to it and prints one JSON object. Scenarios: one plain call (approach
``none``), ``self_consistency`` (OptiLLM's approach draws a fixed 5 samples one after
another; n is not settable per request) and ``majority_voting`` with ``k`` = n (one
upstream request with ``n`` = k, the closest match to Ponder's self-consistency).

    .bench-peers/bin/python bench/peers/optillm_peer.py --sim URL [--n 8] [--reps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib.metadata import version
from pathlib import Path

from _peer import QUESTION, _post, scenario


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sim", required=True)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    port = free_port()
    exe = Path(sys.executable).parent / "optillm"
    env = {**os.environ, "OPENAI_API_KEY": "sk-bench"}
    env.pop("OPTILLM_API_KEY", None)
    proxy = subprocess.Popen(
        [str(exe), "--base-url", f"{args.sim}/v1", "--port", str(port), "--log", "error"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).close()
                break
            except (urllib.error.URLError, ConnectionError):
                if proxy.poll() is not None or time.monotonic() > deadline:
                    err = proxy.stderr.read().decode()[-500:] if proxy.stderr else ""
                    raise SystemExit(f"optillm proxy did not start: {err}") from None
                time.sleep(0.1)

        def call(model: str, **extra: object) -> object:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": QUESTION}],
                "max_tokens": 64,
                **extra,
            }
            return _post(f"{url}/v1/chat/completions", body)

        rows = [
            scenario(args.sim, "plain call", 1, args.reps, lambda: call("none-sim")),
            scenario(
                args.sim, "self_consistency (fixed 5)", 5, args.reps,
                lambda: call("self_consistency-sim"),
            ),
            scenario(
                args.sim, "majority_voting", args.n, args.reps,
                lambda: call("majority_voting-sim", k=args.n),
            ),
        ]  # fmt: skip
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
    print(json.dumps({"peer": "optillm", "version": version("optillm"), "rows": rows}))


if __name__ == "__main__":
    main()
