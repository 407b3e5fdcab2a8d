"""rpc against the simulator: path probabilities, Weibull-mixture pruning, perplexity
consistency over distinct paths, the majority fallback without logprobs, the budget.

Every scripted solution is 11 tokens ("2 + 3 = 5. The answer is 5."), and
``reply_logprobs`` gives every token of a reply the same logprob, so a path's
probability exp(mean logprob) is exactly the number written next to it.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from pydantic import BaseModel

from core.errors import InvalidInput
from core.jobs import submit_job
from core.runtime import Runtime
from core.simulator.config import Rule, SimulatorConfig
from core.simulator.server import Simulator
from strategies.protocol import (
    Budget,
    Choice,
    Conversation,
    Generation,
    ModelRequest,
    ModelRole,
    StrategyResult,
    TokenStream,
    Tool,
    Usage,
)
from strategies.verifier_loops import rpc
from tests.strategies.helpers import QUESTION, replay, script, solve


def solution(a: int, b: int, answer: int) -> str:
    return f"{a} + {b} = {answer}. The answer is {answer}."  # 11 tokens


FIVE_A, FIVE_B = solution(2, 3, 5), solution(3, 2, 5)
SIX_A, SIX_B, SIX_C, SIX_D, SIX_E = (
    solution(a, b, 6) for a, b in [(2, 3), (3, 2), (1, 5), (4, 2), (0, 6)]
)


def paths(*replies: tuple[str, float]) -> SimulatorConfig:
    """The solver's replies in order (cycling), each with its path probability."""
    return script(
        Rule(
            match=r"user: What is 2 \+ 3\?$",
            model="sim-small",
            replies=[text for text, _ in replies],
            reply_logprobs=[math.log(p) for _, p in replies],
        )
    )


# Two confident paths to 5, five unlikely ones to 6, and the first path sampled again.
CROWD = [
    (FIVE_A, 0.9),
    (SIX_A, 0.4),
    (FIVE_B, 0.85),
    (SIX_B, 0.42),
    (SIX_C, 0.38),
    (SIX_D, 0.41),
    (SIX_E, 0.39),
]


async def test_pruning_removes_the_unlikely_majority(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(paths(*CROWD))
    job = await solve(rt, {"kind": "rpc", "n": 8})

    assert [n for n, _ in job.events] == ["path"] * 8 + ["prune", "vote"]
    found = job.events_named("path")
    assert [(p["index"], p["answer"], p["pruned"], p["duplicate_of"]) for p in found] == [
        (0, "5", False, None),
        (1, "6", True, None),
        (2, "5", False, None),
        (3, "6", True, None),
        (4, "6", True, None),
        (5, "6", True, None),
        (6, "6", True, None),
        (7, "5", False, 0),  # FIVE_A again
    ]
    first = found[0]
    assert first["tokens"] == 11
    assert first["logprob"] == pytest.approx(11 * math.log(0.9))
    assert first["mean_logprob"] == pytest.approx(math.log(0.9))
    assert first["probability"] == pytest.approx(0.9)

    prune = job.events_named("prune")[0]
    assert prune["method"] == "weibull"
    assert prune["pruned"] == [1, 3, 4, 5, 6]
    assert prune["kept"] == 3
    assert prune["mean_probability"] == pytest.approx((0.9 * 2 + 0.85 + 2.0) / 8)
    high, low = prune["components"]["high"], prune["components"]["low"]
    assert low["scale"] < 0.5 < high["scale"]

    # The duplicate of FIVE_A counts once: 0.9 + 0.85; every path to 6 was pruned.
    vote = job.events_named("vote")[0]
    assert vote["method"] == "perplexity_consistency"
    assert vote["scores"] == {"5": pytest.approx(1.75), "6": 0.0}
    assert (vote["answer"], vote["confidence"], vote["paths"]) == ("5", 1.0, 8)
    assert job.answer == "5"
    assert job.result["text"] == FIVE_A
    assert job.result["votes"] == {"5": 3, "6": 5}  # a plain majority would say 6
    assert (job.calls_to("small"), job.calls_to("large")) == (1, 0)
    assert job.tokens("small") == 8 * 11

    before = simulator.stats.requests
    again = await replay(rt, job.job_id)
    assert simulator.stats.requests == before
    assert again.result == job.result
    assert again.events == job.events


async def test_without_pruning_the_unlikely_paths_add_up(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(paths(*CROWD))
    job = await solve(rt, {"kind": "rpc", "n": 8, "pruning": "none"})
    prune = job.events_named("prune")[0]
    assert (prune["method"], prune["pruned"], prune["kept"]) == ("none", [], 8)
    vote = job.events_named("vote")[0]
    # 0.4 + 0.42 + 0.38 + 0.41 + 0.39 = 2.0 beats 0.9 + 0.85.
    assert vote["scores"] == {"5": pytest.approx(1.75), "6": pytest.approx(2.0)}
    assert vote["confidence"] == pytest.approx(2.0 / 3.75)
    assert job.answer == "6"


async def test_equal_probabilities_count_distinct_paths(rt: Runtime, simulator: Simulator) -> None:
    # One path to 6 sampled three times, two different paths to 5.
    replies = [(SIX_A, 0.8), (FIVE_A, 0.8), (SIX_A, 0.8), (FIVE_B, 0.8), (SIX_A, 0.8)]
    simulator.set_config(paths(*replies))
    job = await solve(rt, {"kind": "rpc", "n": 5})
    prune = job.events_named("prune")[0]
    assert prune["skipped"] == "fewer than two distinct probabilities"
    assert (prune["pruned"], prune["components"]) == ([], None)
    assert [p["duplicate_of"] for p in job.events_named("path")] == [None, None, 0, None, 0]
    vote = job.events_named("vote")[0]
    assert vote["scores"] == {"6": pytest.approx(0.8), "5": pytest.approx(1.6)}
    assert job.answer == "5"
    assert job.result["votes"] == {"6": 3, "5": 2}


async def test_a_tight_budget_votes_on_the_paths_it_could_pay_for(
    rt: Runtime, simulator: Simulator
) -> None:
    # Each call of 2 takes one full cycle, whichever call the simulator serves first.
    simulator.set_config(paths((FIVE_A, 0.9), (SIX_A, 0.4)))
    spec = {"kind": "rpc", "n": 6, "batch_size": 2, "max_tokens": 16}
    # Three calls issued together reserve 2 x 16 each: two fit in 70, the third gets 6.
    job = await solve(rt, spec, budget={"max_tokens": 70})
    assert [n for n, _ in job.events] == ["budget_exhausted"] + ["path"] * 4 + ["prune", "vote"]
    assert job.events_named("budget_exhausted")[0] == {"what": "tokens", "paths": 4}
    assert job.events_named("prune")[0]["pruned"] == [1, 3]
    assert job.events_named("vote")[0]["scores"] == {"5": pytest.approx(0.9), "6": 0.0}
    assert job.answer == "5"
    assert job.result["budget_exhausted"] is True
    assert job.calls_to("small") == 2
    assert job.tokens() == 4 * 11 <= 70

    before = simulator.stats.requests
    again = await replay(rt, job.job_id)
    assert simulator.stats.requests == before
    assert again.result == job.result


class _NoLogprobs:
    """A role on a server that ignores ``logprobs`` (no token data comes back)."""

    name = "small"

    def __init__(self, replies: list[str]) -> None:
        self.replies = replies
        self.requests: list[ModelRequest] = []

    async def generate(self, request: ModelRequest) -> Generation:
        self.requests.append(request)
        choices = [
            Choice(index=i, text=t, finish_reason="stop") for i, t in enumerate(self.replies)
        ]
        return Generation(role="small", model="m", choices=choices, usage=Usage(), call_key="k")

    def stream(self, request: ModelRequest) -> AbstractAsyncContextManager[TokenStream]:
        raise NotImplementedError


class _Unlimited:
    def remaining_tokens(self) -> int | None:
        return None

    def exhausted(self) -> bool:
        return False


class _Context:
    """The smallest Context: one role, no budget, events collected in a list."""

    def __init__(self, role: _NoLogprobs) -> None:
        self._models: dict[str, ModelRole] = {"small": role}
        self._rng = random.Random(0)
        self.events: list[tuple[str, dict[str, Any]]] = []

    @property
    def models(self) -> Mapping[str, ModelRole]:
        return self._models

    @property
    def budget(self) -> Budget:
        return _Unlimited()

    @property
    def rng(self) -> random.Random:
        return self._rng

    @property
    def conversation(self) -> Conversation:
        return Conversation.of_question(QUESTION)

    @property
    def tools(self) -> Mapping[str, Tool]:
        return {}

    def show(self, text: str) -> None:
        raise AssertionError("rpc has no single visible sample to stream")

    def trace(self, name: str, **attributes: Any) -> None:
        self.events.append((name, attributes))

    @contextlib.asynccontextmanager
    async def span(self, name: str, **attributes: Any) -> AsyncIterator[None]:
        yield

    async def run(self, spec: BaseModel, problem: str) -> StrategyResult:
        raise NotImplementedError


async def test_without_logprobs_it_falls_back_to_a_majority_vote() -> None:
    role = _NoLogprobs([SIX_A, FIVE_A, FIVE_B])
    ctx = _Context(role)
    result = await rpc.run(QUESTION, ctx, rpc.Params(n=3))
    assert role.requests[0].logprobs is True
    assert ctx.events == [
        ("no_logprobs", {"paths": 3}),
        (
            "vote",
            {
                "method": "majority",
                "scores": {"6": 1.0, "5": 2.0},
                "answer": "5",
                "confidence": pytest.approx(2 / 3),
                "paths": 3,
            },
        ),
    ]
    assert result.answer == "5"
    assert result.text == FIVE_A


def test_the_mixture_separates_two_groups_of_paths() -> None:
    mixture = rpc.fit_mixture([0.9, 0.4, 0.85, 0.42, 0.38, 0.41, 0.39, 0.9])
    assert mixture is not None
    assert [round(p) for p in mixture.posterior_high] == [1, 0, 1, 0, 0, 0, 0, 1]
    assert mixture.weight_high == pytest.approx(3 / 8)
    assert rpc.fit_mixture([0.7, 0.7, 0.7]) is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"n": 0}, "strategy.n"),
        ({"pruning": "mean"}, "strategy.pruning"),
        ({"batch_size": 0}, "strategy.batch_size"),
        ({"temperature": 3.0}, "strategy.temperature"),
        ({"votes": 3}, "strategy.votes"),
    ],
)
async def test_bad_params_name_the_field(rt: Runtime, change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        await submit_job(
            rt.sessions, rt.pools, question=QUESTION, strategy={"kind": "rpc", **change}
        )
    assert caught.value.field == field
