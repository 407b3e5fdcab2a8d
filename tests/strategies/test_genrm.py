"""genrm against the simulator: candidates from sim-small; per distinct candidate one
sim-large call of ``verifications`` chain-of-thought chains, each ending in a verdict
line; a chain scores P(Yes) at its verdict token; the mean per candidate decides.

Chains (token counts by the simulator's tokeniser):
    OK  = "Each step checks out.\\nVerdict: Yes"   8 tokens
    BAD = "The sum is wrong.\\nVerdict: No"        8 tokens
    LOST = "I cannot tell."                        4 tokens, no verdict line
``reply_logprobs`` gives each chain's tokens one logprob, so the verdict token of a Yes
chain at p scores p, of a No chain at p scores 1 - p.
"""

from __future__ import annotations

import math
import re
from itertools import product
from typing import Any

import pytest

from core.errors import InvalidInput
from core.jobs import submit_job
from core.runtime import Runtime
from core.simulator.config import Rule, SimulatorConfig
from core.simulator.server import Simulator
from strategies.protocol import Choice, TokenLogprob
from strategies.verifier_loops.genrm import allocate, chain_score
from tests.strategies.helpers import QUESTION, replay, script, solve

SIX = "2 + 3 = 6. The answer is 6."  # 11 tokens each
FIVE = "2 + 3 = 5. The answer is 5."
FOUR = "2 + 3 = 4. The answer is 4."
OK = "Each step checks out.\nVerdict: Yes"
BAD = "The sum is wrong.\nVerdict: No"
LOST = "I cannot tell."


def chains(solution: str, *replies: tuple[str, float]) -> Rule:
    """The verification chains of exactly this solution, in order, with their logprobs."""
    return Rule(
        match=re.escape(f"Proposed solution:\n{solution}\n\nVerify the solution"),
        model="sim-large",
        replies=[text for text, _ in replies],
        reply_logprobs=[math.log(p) for _, p in replies],
    )


def genrm_script(candidates: list[str]) -> SimulatorConfig:
    return script(
        Rule(match=r"user: What is 2 \+ 3\?$", model="sim-small", replies=candidates),
        chains(FIVE, (OK, 0.9), (OK, 0.7)),  # 0.9, 0.7 -> 0.8
        chains(SIX, (BAD, 0.8), (OK, 0.6)),  # 0.2, 0.6 -> 0.4
        chains(FOUR, (BAD, 0.9), (LOST, 0.5)),  # 0.1, not counted -> 0.1
    )


def summary(job: Any) -> list[tuple[Any, ...]]:
    out = []
    for s in job.events_named("score"):
        chained = [(round(c["score"], 6) if c["score"] is not None else None, c["source"])
                   for c in s["chains"] or []]  # fmt: skip
        score = round(s["score"], 6) if s["score"] is not None else None
        out.append((s["index"], s["answer"], score, s["source"], chained, s["duplicate_of"]))
    return out


async def test_mean_p_yes_over_verification_chains_picks_the_candidate(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(genrm_script([SIX, FIVE, FOUR, FIVE]))
    job = await solve(rt, {"kind": "genrm", "solutions": 4, "verifications": 2})

    assert [n for n, _ in job.events] == ["candidate"] * 4 + ["score"] * 4 + ["select"]
    assert summary(job) == [
        (0, "6", 0.4, "chains", [(0.2, "logprobs"), (0.6, "logprobs")], None),
        (1, "5", 0.8, "chains", [(0.9, "logprobs"), (0.7, "logprobs")], None),
        (2, "4", 0.1, "chains", [(0.1, "logprobs"), (None, "none")], None),
        (3, "5", 0.8, "chains", [(0.9, "logprobs"), (0.7, "logprobs")], 1),
    ]
    select = job.events_named("select")[0]
    assert (select["index"], select["answer"], select["tie_break"]) == (1, "5", None)
    assert select["scores"] == {
        "6": pytest.approx(0.4), "5": pytest.approx(0.8), "4": pytest.approx(0.1)
    }  # fmt: skip
    assert job.answer == "5"
    assert job.result["text"] == FIVE

    # One call of n=2 chains per distinct candidate text, all in the verify span.
    calls = [s for s in job.calls if s.name == "large.generate"]
    verify = next(s for s in job.spans if s.kind == "span" and s.name == "verify")
    assert [(s.attributes["n"], s.parent_id) for s in calls] == [(2, verify.id)] * 3
    assert (job.calls_to("small"), job.calls_to("large")) == (1, 3)
    assert job.tokens("small") == 4 * 11
    assert job.tokens("large") == (8 + 8) + (8 + 8) + (8 + 4)

    before = simulator.stats.requests
    again = await replay(rt, job.job_id)
    assert simulator.stats.requests == before
    assert again.result == job.result
    assert again.events == job.events


async def test_no_verifications_is_self_consistency(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(genrm_script([SIX, FIVE, FOUR, FIVE]))
    job = await solve(rt, {"kind": "genrm", "solutions": 4, "verifications": 0})
    assert [n for n, _ in job.events] == ["candidate"] * 4 + ["vote"]
    assert job.events_named("vote")[0] == {
        "votes": {"6": 1, "5": 2, "4": 1}, "answer": "5", "index": 1
    }  # fmt: skip
    assert job.calls_to("large") == 0


async def test_a_small_token_budget_is_spent_on_solutions(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(genrm_script([SIX, FIVE, FOUR, FIVE]))
    # 8 solution-equivalents (8 x 16 tokens): below genrm_from = 16, so SC with 8.
    spec = {"kind": "genrm", "budget_tokens": 128, "max_tokens": 16, "verify_tokens": 16}
    job = await solve(rt, spec)
    assert job.events[0] == (
        "allocate",
        {
            "budget_tokens": 128, "solution_equivalents": 8.0, "solutions": 8,
            "verifications": 0, "mode": "self_consistency",
        },
    )  # fmt: skip
    assert [n for n, _ in job.events[1:]] == ["candidate"] * 8 + ["vote"]
    assert job.answer == "5"
    assert (job.calls_to("small"), job.calls_to("large")) == (1, 0)


@pytest.mark.parametrize(
    ("budget", "solution", "verification", "expected"),
    [
        (8 * 512, 512, 256, (8, 0)),  # low budget: everything on solutions
        (15 * 512, 512, 256, (15, 0)),
        # C = 16, lambda = 0.5: V = floor(32 ** (0.39 / 0.96)) = 4, S = floor(16 / 3) = 5
        (16 * 512, 512, 256, (5, 4)),
        # C = 64: V = floor(128 ** 0.40625) = 7, S = floor(64 / 4.5) = 14
        (64 * 512, 512, 256, (14, 7)),
        # Verification as long as a solution (lambda = 1), C = 16: V = 3, S = 4
        (16 * 100, 100, 100, (4, 3)),
        (100, 512, 256, (1, 0)),  # not even one solution: one, which the budget cuts
    ],
)
def test_allocate(budget: int, solution: int, verification: int, expected: tuple[int, int]) -> None:
    assert allocate(budget, solution, verification) == expected


def test_allocate_stays_within_the_budget_and_grows_solutions_faster() -> None:
    plans = []
    for equivalents, ratio in product([16, 32, 64, 128, 256, 1024], [0.25, 0.5, 1.0, 2.0]):
        budget, solution = equivalents * 400, 400
        s, v = allocate(budget, solution, int(solution * ratio))
        assert s * solution + s * v * int(solution * ratio) <= budget
        assert s >= 2 and v >= 1
        plans.append((equivalents, ratio, s, v))
    at = {(e, r): (s, v) for e, r, s, v in plans}
    # From 16 to 1024 solution-equivalents (lambda = 0.5) S grows more than V.
    (s0, v0), (s1, v1) = at[(16, 0.5)], at[(1024, 0.5)]
    assert s1 / s0 > v1 / v0 > 1


async def test_budget_out_mid_verification_keeps_the_best_verified(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(genrm_script([FIVE, SIX, FOUR, FIVE]))
    spec = {"kind": "genrm", "solutions": 4, "verifications": 2, "max_tokens": 12}
    # One call for the candidates and one for FIVE's chains; SIX and FOUR go unverified.
    job = await solve(rt, spec, budget={"max_calls": 2})
    assert [n for n, _ in job.events] == (
        ["candidate"] * 4 + ["score"] * 4 + ["budget_exhausted", "select"]
    )
    assert [(s[0], s[2], s[3], s[5]) for s in summary(job)] == [
        (0, 0.8, "chains", None),
        (1, None, "budget", None),
        (2, None, "budget", None),
        (3, 0.8, "chains", 0),
    ]
    assert job.events_named("budget_exhausted")[0] == {"phase": "verify", "what": "calls"}
    assert job.answer == "5"
    assert job.result["budget_exhausted"] is True
    assert (job.calls_to("small"), job.calls_to("large")) == (1, 1)

    before = simulator.stats.requests
    again = await replay(rt, job.job_id)
    assert simulator.stats.requests == before
    assert again.result == job.result


async def test_a_token_budget_is_never_exceeded(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(genrm_script([FIVE, SIX, FOUR, FIVE]))
    spec = {
        "kind": "genrm", "solutions": 4, "verifications": 2, "max_tokens": 12,
        "verify_tokens": 16,
    }  # fmt: skip
    # Candidates use 44 of the 48 reserved; FIVE's chains reserve 2 x 16 of the 42 left;
    # the next call would need 32 of the 10 that remain.
    job = await solve(rt, spec, budget={"max_tokens": 86})
    assert [s[3] for s in summary(job)] == ["chains", "budget", "budget", "chains"]
    assert job.answer == "5"
    assert job.tokens() == 44 + 16 <= 86


async def test_with_nothing_verified_the_majority_decides(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(genrm_script([SIX, FIVE, FOUR, FIVE]))
    job = await solve(rt, {"kind": "genrm", "verifications": 2}, budget={"max_calls": 1})
    select = job.events_named("select")[0]
    assert (select["fallback"], select["answer"], select["index"]) == ("majority", "5", 1)
    assert job.result["budget_exhausted"] is True


def _choice(text: str, tokens: list[tuple[str, float, list[tuple[str, float]]]] | None) -> Choice:
    found = (
        None
        if tokens is None
        else [TokenLogprob(token=t, logprob=lp, top=top) for t, lp, top in tokens]
    )
    return Choice(index=0, text=text, tokens=found)


def test_chain_score_reads_the_token_after_the_last_verdict_mark() -> None:
    text = "Verdict: No, wait.\nVerdict: Yes"
    tokens = [
        ("Verdict", -0.1, []), (":", -0.1, []), (" No", -0.1, []), (",", -0.1, []),
        (" wait", -0.1, []), (".", -0.1, []), ("\nVerdict", -0.1, []), (":", -0.1, []),
        (" Yes", math.log(0.6), [(" Yes", math.log(0.6)), (" No", math.log(0.2))]),
    ]  # fmt: skip
    # Both classes visible: renormalised, 0.6 / (0.6 + 0.2).
    score, source = chain_score(_choice(text, tokens))
    assert score == pytest.approx(0.75)
    assert source == "logprobs"
    # Without logprobs the word after the mark is parsed.
    assert chain_score(_choice("Looks fine.\nverdict: **no**", None)) == (0.0, "parsed")
    assert chain_score(_choice("Step 1 is right, yes.", None)) == (None, "none")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"solutions": 0}, "strategy.solutions"),
        ({"verifications": 33}, "strategy.verifications"),
        ({"verify_temperature": 0.0}, "strategy.verify_temperature"),
        ({"budget_tokens": 0}, "strategy.budget_tokens"),
        ({"generator": {"kind": "direct", "max_tokens": 0}}, "strategy.generator.max_tokens"),
    ],
)
async def test_bad_params_name_the_field(rt: Runtime, change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        await submit_job(
            rt.sessions, rt.pools, question=QUESTION, strategy={"kind": "genrm", **change}
        )
    assert caught.value.field == field
