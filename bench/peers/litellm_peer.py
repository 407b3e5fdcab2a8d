"""LiteLLM's SDK call (``litellm.acompletion``) beside a raw httpx call to the simulator.

Runs with the peers' venv (``.bench-peers/bin/python``), never Ponder's, and prints one
JSON object. The two calls alternate, one at a time, so that machine noise hits both
alike; each carries the same OpenAI chat body. This is LiteLLM's in-process overhead
per model call, the figure that compares with Ponder's journaled call (also in-process);
its proxy is measured from Ponder's side, in ``openai_wire.py``.

    .bench-peers/bin/python bench/peers/litellm_peer.py --sim URL [--calls 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from importlib.metadata import version

from _peer import QUESTION

MESSAGES = [{"role": "user", "content": QUESTION}]
WARMUP = 50


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


async def measure(sim: str, calls: int) -> dict[str, float]:
    import httpx
    import litellm

    async with httpx.AsyncClient() as http:

        async def raw() -> None:
            body = {"model": "sim", "messages": MESSAGES, "max_tokens": 64}
            response = await http.post(f"{sim}/v1/chat/completions", json=body)
            response.raise_for_status()
            response.json()

        async def sdk() -> None:
            await litellm.acompletion(
                model="openai/sim", api_base=f"{sim}/v1", api_key="sk-sim",
                messages=MESSAGES, max_tokens=64,
            )  # fmt: skip

        samples: dict[str, list[float]] = {"raw": [], "sdk": []}
        for i in range(WARMUP + calls):
            for name, fn in (("raw", raw), ("sdk", sdk)):
                started = time.perf_counter()
                await fn()
                if i >= WARMUP:
                    samples[name].append((time.perf_counter() - started) * 1000)
    raw50, raw99 = statistics.median(samples["raw"]), _p99(samples["raw"])
    p50, p99 = statistics.median(samples["sdk"]), _p99(samples["sdk"])
    return {
        "calls": calls,
        "raw_p50_ms": round(raw50, 3),
        "raw_p99_ms": round(raw99, 3),
        "p50_ms": round(p50, 3),
        "p99_ms": round(p99, 3),
        "p50_over_raw_ms": round(p50 - raw50, 3),
        "p99_over_raw_ms": round(p99 - raw99, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sim", required=True)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    # The packaged model cost map, not a fetch from GitHub on import.
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    sdk = asyncio.run(measure(args.sim, args.calls))
    print(json.dumps({"peer": "litellm", "version": version("litellm"), "sdk": sdk}))


if __name__ == "__main__":
    main()
