"""its_hub's self-consistency over the simulator's OpenAI-compatible endpoint.

Runs with the peers' venv (``.bench-peers/bin/python``), never Ponder's; prints one JSON
object. Scenarios: one plain call (``agenerate_single``) and ``SelfConsistency`` with a
budget of n (its default orchestrator sends n concurrent requests of one choice each).

    .bench-peers/bin/python bench/peers/its_hub_peer.py --sim URL [--n 8] [--reps 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import warnings
from importlib.metadata import version

from _peer import QUESTION, scenario

warnings.simplefilter("ignore")

from its_hub.api.types import ChatMessage  # noqa: E402
from its_hub.core.algorithms.self_consistency import SelfConsistency  # noqa: E402
from its_hub.core.lms.openai_lm import OpenAICompatibleLanguageModel  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sim", required=True)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    loop = asyncio.new_event_loop()
    lm = OpenAICompatibleLanguageModel(
        endpoint=f"{args.sim}/v1", api_key="bench", model_name="sim", max_tokens=64
    )
    sc = SelfConsistency()
    message = [ChatMessage(role="user", content=QUESTION)]

    def plain() -> object:
        return loop.run_until_complete(lm.agenerate_single(message))

    def self_consistency() -> object:
        return loop.run_until_complete(sc.ainfer(lm, QUESTION, budget=args.n))

    rows = [
        scenario(args.sim, "plain call", 1, args.reps, plain),
        scenario(args.sim, "self-consistency", args.n, args.reps, self_consistency),
    ]
    loop.run_until_complete(lm.close())
    loop.close()
    print(json.dumps({"peer": "its_hub", "version": version("its-hub"), "rows": rows}))


if __name__ == "__main__":
    main()
