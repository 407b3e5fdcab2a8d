"""first_finish against the simulator's real SSE streams: the shortest trace wins the race.

All samples share one prompt, so they match one rule; ``pick="seed"`` hands each sample
its reply from its seed. Job seed 5 draws three sample seeds that pick replies 1, 0, 2
(checked below with the simulator's own ``stable_index``): sample 1 gets ``replies[0]``.
Every token takes 25 ms, so a reply's length decides when it finishes: 11 tokens end at
~275 ms, 16 at ~400 ms, 27 at ~675 ms.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from core.db import repo
from core.errors import InvalidInput
from core.jobs import submit_job
from core.runtime import Runtime
from core.simulator.config import Latency, Rule
from core.simulator.engine import stable_index
from core.simulator.server import Simulator
from strategies.protocol import CANCELLED
from tests.strategies.helpers import QUESTION, SolvedJob, replay, script, solve

SHORT = "2 + 3 = 5. The answer is 5."  # 11 tokens
MID = "Adding three to two gives 2 + 3 = 4. The answer is 4."  # 16 tokens
LONG = "Let me count carefully from two, adding one three times: three, four, five, six, seven. The answer is 6."  # noqa: E501  27 tokens
NOPE = "I am not sure."  # 5 tokens, no answer
LENGTH = {SHORT: 11, MID: 16, LONG: 27, NOPE: 5}
SEED = 5


def race(*replies: str) -> Any:
    return script(
        Rule(
            model="sim-small",
            replies=list(replies),
            pick="seed",
            latency=Latency(per_token_ms=25),
        )
    )


def assigned(replies: list[str]) -> list[str]:
    """The reply each sample gets: seeds drawn as the strategy draws them."""
    rng = random.Random(SEED)
    return [replies[stable_index(rng.randrange(2**31), 0, len(replies))] for _ in replies]


def test_the_script_gives_sample_1_the_first_reply() -> None:
    assert assigned(["a", "b", "c"]) == ["b", "a", "c"]


async def journal(rt: Runtime, job_id: str) -> list[Any]:
    """Journal entries in sample order (by their request's seed)."""
    rng = random.Random(SEED)
    order = [rng.randrange(2**31) for _ in range(3)]
    async with rt.sessions() as session:
        entries = list(await repo.list_calls(session, job_id))
    return sorted(entries, key=lambda e: order.index(e.request["seed"]))


def decisions(job: SolvedJob) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for name, a in job.events:
        if name == "finished":
            out.append((name, a["index"], a["tokens"], a["answer"], a["accepted"], a["skipped"]))
        elif name == "cancelled":
            out.append((name, a["index"]))
        elif name == "winner":
            out.append((name, a["index"], a["answer"], a["tokens"], a["reason"]))
        else:
            out.append((name, *sorted(a.items())))
    return out


async def wait_for_aborts(simulator: Simulator, count: int) -> None:
    for _ in range(200):
        if simulator.stats.aborted_requests >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{simulator.stats.aborted_requests} aborted, expected {count}")


async def test_the_first_finisher_wins_and_the_others_are_cancelled(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(race(SHORT, MID, LONG))  # samples get MID, SHORT, LONG
    job = await solve(rt, {"kind": "first_finish", "n": 3, "max_tokens": 64}, seed=SEED)

    assert job.answer == "5"
    assert job.result["text"] == SHORT
    assert decisions(job) == [
        ("finished", 1, 11, "5", True, None),
        ("cancelled", 0),
        ("cancelled", 2),
        ("winner", 1, "5", 11, "first_finish"),
    ]
    mid, short, long_ = await journal(rt, job.job_id)
    assert short.response["choices"][0]["finish_reason"] == "stop"
    assert short.completion_tokens == 11
    partial = {0: mid, 2: long_}
    for entry, reply in ((mid, MID), (long_, LONG)):
        choice = entry.response["choices"][0]
        assert choice["finish_reason"] == CANCELLED
        assert reply.startswith(choice["text"])
        # Decoding in parallel, a loser has about as many tokens as the winner, far
        # fewer than its whole reply.
        assert 0 < entry.completion_tokens < LENGTH[reply]
    cancelled = {e["index"]: e["tokens"] for e in job.events_named("cancelled")}
    assert cancelled == {i: e.completion_tokens for i, e in partial.items()}
    # Charged: the winner in full plus what the losers had produced when stopped.
    assert job.tokens("small") == 11 + sum(cancelled.values())
    assert job.calls_to("small") == 3
    assert job.result["details"] == {
        "winner": 1,
        "reason": "first_finish",
        "launched": 3,
        "cancelled": 2,
        "tokens": job.tokens("small"),
    }
    await wait_for_aborts(simulator, 2)  # the server stopped decoding the losers

    before = simulator.stats.requests
    again = await replay(rt, job.job_id)
    assert simulator.stats.requests == before
    assert again.result == job.result
    assert again.events == job.events
    assert again.tokens("small") == job.tokens("small")


@pytest.mark.parametrize(
    ("skip", "expected"),
    [
        (
            True,
            [
                ("finished", 1, 5, None, False, "no_answer"),  # first, but says nothing
                ("finished", 0, 11, "5", True, None),
                ("cancelled", 2),
                ("winner", 0, "5", 11, "first_finish"),
            ],
        ),
        (
            False,
            [
                ("finished", 1, 5, None, True, None),
                ("cancelled", 0),
                ("cancelled", 2),
                ("winner", 1, None, 5, "first_finish"),
            ],
        ),
    ],
)
async def test_a_finisher_without_an_answer_is_skipped_unless_told_otherwise(
    rt: Runtime, simulator: Simulator, skip: bool, expected: list[tuple[Any, ...]]
) -> None:
    simulator.set_config(race(NOPE, SHORT, LONG))  # samples get SHORT, NOPE, LONG
    spec = {"kind": "first_finish", "n": 3, "max_tokens": 64, "skip_unanswered": skip}
    job = await solve(rt, spec, seed=SEED)
    assert decisions(job) == expected
    assert job.answer == ("5" if skip else None)

    before = simulator.stats.requests
    again = await replay(rt, job.job_id)
    assert simulator.stats.requests == before
    assert again.events == job.events


async def test_finishers_below_min_tokens_do_not_win(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(race(SHORT, MID, LONG))  # samples get MID, SHORT, LONG
    spec = {"kind": "first_finish", "n": 3, "max_tokens": 64, "min_tokens": 12}
    job = await solve(rt, spec, seed=SEED)
    assert decisions(job) == [
        ("finished", 1, 11, "5", False, "too_short"),
        ("finished", 0, 16, "4", True, None),
        ("cancelled", 2),
        ("winner", 0, "4", 16, "first_finish"),
    ]
    *_, long_ = await journal(rt, job.job_id)
    assert long_.completion_tokens < 27
    assert job.tokens("small") == 11 + 16 + long_.completion_tokens


async def test_with_no_acceptable_finisher_the_earliest_answer_is_the_fallback(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(race(SHORT, MID, LONG))
    spec = {"kind": "first_finish", "n": 3, "max_tokens": 64, "min_tokens": 30}
    job = await solve(rt, spec, seed=SEED)
    # Nothing is accepted, so nothing is cancelled: every sample runs to its end.
    assert decisions(job) == [
        ("finished", 1, 11, "5", False, "too_short"),
        ("finished", 0, 16, "4", False, "too_short"),
        ("finished", 2, 27, "6", False, "too_short"),
        ("winner", 1, "5", 11, "fallback"),
    ]
    assert job.tokens("small") == 11 + 16 + 27


async def test_no_answer_anywhere_gives_none(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(script(Rule(model="sim-small", replies=[NOPE])))
    job = await solve(rt, {"kind": "first_finish", "n": 2, "max_tokens": 64}, seed=SEED)
    assert job.answer is None
    finished = sorted((a["index"], a["skipped"]) for a in job.events_named("finished"))
    assert finished == [(0, "no_answer"), (1, "no_answer")]
    assert job.events_named("winner") == [
        {"index": None, "answer": None, "tokens": None, "reason": "none"}
    ]


async def test_a_tight_budget_races_the_samples_it_can_pay_for(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(race(SHORT, MID, LONG))  # samples get MID, SHORT, (LONG)
    spec = {"kind": "first_finish", "n": 3, "max_tokens": 16}
    # Two samples reserve 16 tokens each; the third would have 8 of the 16 it needs.
    job = await solve(rt, spec, seed=SEED, budget={"max_tokens": 40})
    assert decisions(job) == [
        ("budget_exhausted", ("launched", 2), ("what", "tokens")),
        ("finished", 1, 11, "5", True, None),
        ("cancelled", 0),
        ("winner", 1, "5", 11, "first_finish"),
    ]
    assert job.answer == "5"
    assert job.result["budget_exhausted"] is True
    assert job.calls_to("small") == 2
    assert 11 < job.tokens() <= 11 + 15 < 40

    before = simulator.stats.requests
    again = await replay(rt, job.job_id)
    assert simulator.stats.requests == before
    assert again.result == job.result and again.events == job.events


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"n": 0}, "strategy.n"),
        ({"temperature": 3.0}, "strategy.temperature"),
        ({"max_tokens": 16, "min_tokens": 32}, "strategy.min_tokens"),
        ({"min_tokens": -1}, "strategy.min_tokens"),
        ({"patience": 2}, "strategy.patience"),
    ],
)
async def test_bad_params_name_the_field(rt: Runtime, change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        await submit_job(
            rt.sessions, rt.pools, question=QUESTION, strategy={"kind": "first_finish", **change}
        )
    assert caught.value.field == field


async def test_fewer_tokens_than_the_fixed_n_baseline_on_the_same_script(
    rt: Runtime, simulator: Simulator
) -> None:
    # The same three replies, the same seeds: self_consistency waits for every sample
    # and pays for all 11 + 16 + 27 tokens; first_finish pays for the winner and what
    # the losers had produced when stopped.
    simulator.set_config(race(SHORT, MID, LONG))
    baseline = await solve(rt, {"kind": "self_consistency", "n": 3, "max_tokens": 64}, seed=SEED)
    raced = await solve(rt, {"kind": "first_finish", "n": 3, "max_tokens": 64}, seed=SEED)

    assert baseline.tokens("small") == LENGTH[SHORT] + LENGTH[MID] + LENGTH[LONG]
    assert raced.tokens("small") < baseline.tokens("small")
    # The losers stopped about where the winner ended (a few tokens may stream before
    # the stop lands): well short of the 43 tokens their whole replies cost.
    assert raced.tokens("small") <= 3 * LENGTH[SHORT] + 6
