"""particle_filter against the simulator: step rewards, softmax weights, multinomial
resampling with the job's rng, finished particles retained, the final pick; plus the
step helpers it shares with beam_search (strategies.shared.stepwise).

Two scripted solutions, one step per blank line; the prefill continuation of the
simulator serves one step per call as a particle's prefix grows:
    A = "2 + 3 = 5." / "So the total is 5." / "The answer is 5."   rewards .9 .95 .98
    B = "2 + 3 = 6." / "So the total is 6." / "The answer is 6."   rewards .2 .3 .1
"""

from __future__ import annotations

import math
import random
import re
from typing import Any

import pytest

from core.db import repo
from core.errors import InvalidInput
from core.jobs import submit_job
from core.runtime import Runtime
from core.simulator.config import Rule
from core.simulator.server import Simulator
from strategies.protocol import Choice
from strategies.shared.stepwise import Partial, extend, softmax, states_final_answer, step_request
from tests.strategies.helpers import QUESTION, replay, script, solve

A = "2 + 3 = 5.\n\nSo the total is 5.\n\nThe answer is 5."
B = "2 + 3 = 6.\n\nSo the total is 6.\n\nThe answer is 6."
PATHS = {"A": A, "B": B}
REWARDS = {"A": [0.9, 0.95, 0.98], "B": [0.2, 0.3, 0.1]}


def judged(partial: str, p_yes: float) -> Rule:
    """The verifier's step reward for exactly this partial solution: P(Yes) = p_yes."""
    word, p = ("Yes", p_yes) if p_yes >= 0.5 else ("No", 1.0 - p_yes)
    return Rule(
        match=re.escape(f"Reasoning so far:\n{partial}\n\nIs the"),
        model="sim-large",
        replies=[word],
        token_logprob=math.log(p),
    )


def prefix(path: str, steps: int) -> str:
    return "\n\n".join(PATHS[path].split("\n\n")[:steps])


def two_paths_script(first: list[str]) -> Any:
    verifier = [judged(prefix(p, k + 1), r) for p, rs in REWARDS.items() for k, r in enumerate(rs)]
    return script(
        # A prefilled particle continues the solution it started (first match wins).
        Rule(match=r"assistant: 2 \+ 3 = 5\.", model="sim-small", replies=[A], pick="first"),
        Rule(match=r"assistant: 2 \+ 3 = 6\.", model="sim-small", replies=[B], pick="first"),
        Rule(match=r"user: What is 2 \+ 3\?$", model="sim-small", replies=first),
        *verifier,
    )


def sm(values: list[float], temperature: float = 0.5) -> list[float]:
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


async def test_particles_resample_by_step_reward_and_the_best_finished_one_answers(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(two_paths_script([A, B]))  # cycle: n=4 gives A, B, A, B
    spec = {"kind": "particle_filter", "particles": 4, "max_steps": 5, "step_tokens": 32}
    job = await solve(rt, spec)

    names = [n for n, _ in job.events]
    assert names == [
        "step_reward", "resample", "step_reward", "resample", "step_reward",
        "finished", "finished", "finished", "finished", "final",
    ]  # fmt: skip
    rewards, resamples = job.events_named("step_reward"), job.events_named("resample")

    # Step 1: one call with n=4 (all particles share the empty prefix); two distinct
    # partial solutions, so two verifier calls.
    assert rewards[0]["slots"] == [0, 1, 2, 3]
    assert rewards[0]["rewards"] == pytest.approx([0.9, 0.2, 0.9, 0.2])
    assert rewards[0]["sources"] == ["logprobs"] * 4
    assert rewards[0]["ends"] == [None] * 4
    # softmax(r / 0.5): e^1.8 / (2 e^1.8 + 2 e^0.4) = 0.40109 for A, 0.09891 for B.
    assert resamples[0]["weights"] == pytest.approx([0.40109, 0.09891, 0.40109, 0.09891], 1e-4)
    # The job rng is Random(seed=7); before this it drew 1 step seed and 2 verifier seeds.
    rng = random.Random(7)
    for _ in range(3):
        rng.randrange(2**31)
    first = rng.choices([0, 1, 2, 3], weights=resamples[0]["weights"], k=4)
    assert resamples[0]["ancestors"] == first
    paths = ["ABAB"[a] for a in first]

    # Step 2: every particle continues its ancestor's solution.
    assert rewards[1]["rewards"] == pytest.approx([REWARDS[p][1] for p in paths])
    assert resamples[1]["weights"] == pytest.approx(sm([REWARDS[p][1] for p in paths]))
    assert set(resamples[1]["ancestors"]) <= {0, 1, 2, 3}
    later = [paths[a] for a in resamples[1]["ancestors"]]

    # Step 3: everyone states an answer and is finished (no resampling of finished ones).
    assert rewards[2]["rewards"] == pytest.approx([REWARDS[p][2] for p in later])
    assert rewards[2]["ends"] == ["answer"] * 4
    finished = job.events_named("finished")
    assert [(e["slot"], e["reason"], e["answer"]) for e in finished] == [
        (s, "answer", "5" if p == "A" else "6") for s, p in enumerate(later)
    ]
    final = job.events_named("final")[0]
    assert final["mode"] == "weight" and final["finished"] is True
    assert final["weights"] == pytest.approx(sm([REWARDS[p][2] for p in later]))
    best = "A" if "A" in later else "B"
    assert final["slot"] == later.index(best)
    assert job.answer == ("5" if best == "A" else "6")
    assert job.result["text"] == (A if best == "A" else B)

    # One call per distinct prefix and step; one judgement per distinct partial solution.
    assert job.calls_to("small") == 1 + len(set(paths)) + len(set(later))
    assert job.calls_to("large") == 2 + len(set(paths)) + len(set(later))
    # 4 particles × ("2 + 3 = 5." 6 + "So the total is 5." 6 + "The answer is 5." 5 tokens).
    assert job.tokens("small") == 4 * (6 + 6 + 5)
    assert job.tokens("large") == job.calls_to("large")  # "Yes" / "No": one token each
    assert job.calls[0].attributes["n"] == 4

    # A continued particle is prefilled as the assistant message and stops at a blank line.
    async with rt.sessions() as session:
        calls = [c for c in await repo.list_calls(session, job.job_id) if c.role == "small"]
    second = calls[1].request
    assert second["continue_final_message"] is True and second["stop"] == ["\n\n"]
    assert second["messages"][-1] == {"role": "assistant", "content": f"{prefix(paths[0], 1)}\n\n"}

    before = simulator.stats.requests
    again = await replay(rt, job.job_id)
    assert simulator.stats.requests == before
    assert again.result == job.result
    assert again.events == job.events


async def test_a_finished_particle_is_retained_and_only_live_ones_are_resampled(
    rt: Runtime, simulator: Simulator
) -> None:
    short = "The answer is 5."  # a one-step solution: finished at step 1
    # Cycle: slot 0 gets the short solution, slot 1 A, slot 2 B.
    simulator.set_config(script(*two_paths_script([short, A, B]).rules, judged(short, 0.3)))
    job = await solve(rt, {"kind": "particle_filter", "particles": 3, "final": "vote"})
    names = [n for n, _ in job.events]
    assert names[:3] == ["step_reward", "finished", "resample"]
    assert job.events_named("finished")[0] == {
        "step": 1, "slot": 0, "reason": "answer", "answer": "5", "reward": pytest.approx(0.3),
    }  # fmt: skip
    resamples = job.events_named("resample")
    assert [r["slots"] for r in resamples] == [[1, 2], [1, 2]]  # slot 0 is never redrawn
    assert resamples[0]["weights"] == pytest.approx(sm([0.9, 0.2]))  # 0.8022, 0.1978
    rng = random.Random(7)
    for _ in range(1 + 3):  # one step seed, three distinct partial solutions judged
        rng.randrange(2**31)
    assert resamples[0]["ancestors"] == rng.choices([1, 2], resamples[0]["weights"], k=2)
    steps = job.events_named("step_reward")
    assert [e["slots"] for e in steps] == [[0, 1, 2], [1, 2], [1, 2]]
    final = job.events_named("final")[0]
    assert final["slots"] == [0, 1, 2]  # the early finisher takes part in the final vote
    assert final["answers"][0] == "5"
    assert final["weights"] == pytest.approx(sm([0.3, *steps[2]["rewards"]]))
    assert job.result["details"]["finished"] == 3


async def test_final_by_weight_or_by_weighted_vote(rt: Runtime, simulator: Simulator) -> None:
    replies = ["So 5. The answer is 5.", "Thus 6. The answer is 6.", "Hence 5. The answer is 5."]
    rules = [judged(text, r) for text, r in zip(replies, [0.6, 0.9, 0.7], strict=True)]
    first = Rule(match=r"user: What is 2 \+ 3\?$", model="sim-small", replies=replies)
    outcomes = {}
    for mode in ("weight", "vote"):
        simulator.set_config(script(first, *rules))
        job = await solve(rt, {"kind": "particle_filter", "particles": 3, "final": mode})
        # Everyone finishes at step 1: no resampling; finished particles are final.
        assert [n for n, _ in job.events] == ["step_reward", *["finished"] * 3, "final"]
        outcomes[mode] = job.events_named("final")[0], job
    weights = sm([0.6, 0.9, 0.7])  # 0.2473, 0.4507, 0.3020
    by_weight, job = outcomes["weight"]
    assert by_weight["weights"] == pytest.approx(weights)
    assert (by_weight["slot"], by_weight["answer"]) == (1, "6")
    assert job.answer == "6"
    assert job.result["votes"] == {"5": 2, "6": 1}
    # The two 5s together outweigh the single best 6: 0.5493 against 0.4507.
    by_vote, job = outcomes["vote"]
    assert by_vote["votes"] == pytest.approx({"5": weights[0] + weights[2], "6": weights[1]})
    assert (by_vote["slot"], by_vote["answer"]) == (2, "5")  # the heavier particle saying 5
    assert job.answer == "5"
    assert job.result["text"] == replies[2]


async def test_a_tight_budget_stops_between_steps_with_the_best_particle(
    rt: Runtime, simulator: Simulator
) -> None:
    # Both particles follow A, so the run does not depend on which ancestors are drawn.
    simulator.set_config(two_paths_script([A]))
    spec = {"kind": "particle_filter", "particles": 2, "max_steps": 5, "step_tokens": 8}
    job = await solve(rt, spec, budget={"max_tokens": 30})
    # Step 1: 2 × 6 tokens + one judgement (1 token; both texts are equal) = 13.
    # Step 2: 2 × 6 + 1 = 13 more (26). Step 3 would reserve 2 × 8 > 4 left.
    assert [n for n, _ in job.events] == [
        "step_reward", "resample", "step_reward", "resample", "budget_exhausted", "final",
    ]  # fmt: skip
    assert job.events_named("budget_exhausted")[0] == {"what": "tokens", "step": 3}
    final = job.events_named("final")[0]
    assert final["finished"] is False and final["answer"] == "5"
    assert job.result["budget_exhausted"] is True
    assert job.result["text"] == prefix("A", 2)
    assert job.result["details"]["steps"] == 2
    assert job.tokens() == 26 <= 30
    assert (job.calls_to("small"), job.calls_to("large")) == (2, 2)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"particles": 0}, "strategy.particles"),
        ({"resample_temperature": 0}, "strategy.resample_temperature"),
        ({"final": "max"}, "strategy.final"),
        ({"step_delimiter": ""}, "strategy.step_delimiter"),
        ({"weights": "odds"}, "strategy.weights"),
    ],
)
async def test_bad_params_name_the_field(rt: Runtime, change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        await submit_job(
            rt.sessions,
            rt.pools,
            question=QUESTION,
            strategy={"kind": "particle_filter", **change},
        )
    assert caught.value.field == field


# -- strategies.shared.stepwise: the step helpers --------------------------------------------


def test_extend_recognises_the_ways_a_solution_ends() -> None:
    start = Partial()
    one = extend(start, Choice(index=0, text="2 + 3 = 5.", finish_reason="stop"), max_steps=3)
    assert (one.text, one.prefill, one.steps, one.finished) == (
        "2 + 3 = 5.",
        "2 + 3 = 5.\n\n",
        1,
        False,
    )
    said = extend(one, Choice(index=0, text="The answer is 5.", finish_reason="stop"), max_steps=3)
    assert (said.finished, said.end, said.answer) == (True, "answer", "5")
    ended = extend(one, Choice(index=0, text="", finish_reason="stop"), max_steps=3)
    assert (ended.finished, ended.end, ended.text, ended.steps) == (True, "eos", "2 + 3 = 5.", 1)
    cut = extend(one, Choice(index=0, text="So the to", finish_reason="length"), max_steps=3)
    # A step cut by max_tokens resumes mid-step: no delimiter is added to the prefill.
    assert (cut.prefill, cut.finished) == ("2 + 3 = 5.\n\nSo the to", False)
    last = extend(cut, Choice(index=0, text="tal is 5.", finish_reason="stop"), max_steps=3)
    assert (last.text, last.end, last.answer) == (
        "2 + 3 = 5.\n\nSo the total is 5.",
        "max_steps",
        "5",
    )


def test_final_answer_statements_and_softmax() -> None:
    assert states_final_answer("The answer is 5.")
    assert states_final_answer("so \\boxed{5}")
    assert states_final_answer("#### 5")
    assert states_final_answer("Final answer: 5")
    assert not states_final_answer("2 + 3 = 5.")
    assert not states_final_answer("To answer this, add.")
    assert softmax([0.9, 0.2], 0.5) == pytest.approx([0.80218, 0.19782], 1e-4)
    assert softmax([1000.0, 1000.0], 0.01) == [0.5, 0.5]  # shifted: no overflow


def test_step_request_prefills_only_a_started_solution() -> None:
    fresh = step_request("Q?", Partial(), n=4, max_tokens=32, temperature=0.8, seed=1)
    assert fresh.messages is not None and fresh.messages[-1]["role"] == "user"
    assert (fresh.n, fresh.stop, fresh.continue_final_message) == (4, ["\n\n"], False)
    grown = Partial(text="Step one.", sep="\n\n", steps=1)
    later = step_request("Q?", grown, n=1, max_tokens=32, temperature=0.8, seed=1, delimiter="\n")
    assert later.messages is not None
    assert later.messages[-1] == {"role": "assistant", "content": "Step one.\n\n"}
    assert (later.stop, later.continue_final_message) == (["\n"], True)
