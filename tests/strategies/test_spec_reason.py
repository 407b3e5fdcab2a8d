"""spec_reason against two scripted models: the small one drafts, the large one judges.

The script: the small model's solution goes wrong at step 1 ("2 + 3 = 6."); the large
judge scores step 0 with 8, step 1 with 2 and the final step with 9. So step 0 is
accepted, step 1 is rejected and rewritten by the large model ("2 + 3 = 5."), and the
small model, continuing the corrected chain, concludes "The answer is 5.".

Simulator tokens (a word with its leading space, or one punctuation character):
"We add 2 and 3." = 6, "2 + 3 = 6." = 6, "2 + 3 = 5." = 6, "The answer is 5." = 5,
a judgement digit = 1.
"""

from __future__ import annotations

from typing import Any

import pytest

from core.errors import InvalidInput
from core.jobs import submit_job
from core.runtime import Runtime
from core.simulator.config import Rule
from core.simulator.server import Simulator
from strategies.collaboration import spec_reason
from strategies.shared.collaboration import STEP_SYSTEM, step_request
from tests.strategies.helpers import QUESTION, replay, script, solve

SMALL_TEXT = "We add 2 and 3.\n\n2 + 3 = 6.\n\nThe answer is 6."
LARGE_TEXT = "We add 2 and 3.\n\n2 + 3 = 5.\n\nThe answer is 5."
JUDGE = r"\nuser: Score the last step\."


def rules(*, judge_step1: str = "2") -> list[Rule]:
    return [
        # Judgements: the draft is the end of the assistant message before the question.
        Rule(model="sim-large", match=r"= 6\." + JUDGE, replies=[judge_step1]),
        Rule(model="sim-large", match=r"answer is 5\." + JUDGE, replies=["9"]),
        Rule(model="sim-large", match=JUDGE, replies=["8"]),
        Rule(model="sim-large", replies=[LARGE_TEXT]),
        # After the large model's step the small model continues the corrected chain.
        Rule(model="sim-small", match=r"= 5\.\n\n", replies=[LARGE_TEXT]),
        Rule(model="sim-small", replies=[SMALL_TEXT]),
    ]


def decisions(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[Any, ...]]:
    """The decision events with their key attributes."""
    out: list[tuple[Any, ...]] = []
    for name, a in events:
        if name == "draft":
            out.append((name, a["step"], a["tokens"], a["speculative"]))
        elif name == "discard":
            out.append((name, a["step"], a["tokens"]))
        elif name == "judgement":
            out.append((name, a["step"], a["score"], a["source"]))
        elif name in ("accept", "reject"):
            out.append((name, a["step"], a["score"], a.get("reason")))
        elif name == "step":
            out.append((name, a["step"], a["by"], a["tokens"], a["end"]))
        elif name == "final":
            out.append((name, a["answer"], a["steps"], a["steps_by"], a["end"]))
        else:
            out.append((name,))
    return out


async def test_accepts_good_drafts_and_rewrites_a_rejected_step(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(script(*rules()))
    job = await solve(rt, {"kind": "spec_reason"})

    assert job.answer == "5"
    assert job.result["text"] == LARGE_TEXT
    # Pipelined (the default): while step k is judged, the small model drafts step k+1
    # as if k were accepted. Step 1 is rejected, so the draft of step 2 made on top of
    # it ("The answer is 6.", 5 tokens) is discarded.
    assert decisions(job.events) == [
        ("draft", 0, 6, False),
        ("judgement", 0, 8.0, "logprobs"),
        ("accept", 0, 8.0, None),
        ("step", 0, "small", 6, None),
        ("draft", 1, 6, True),
        ("judgement", 1, 2.0, "logprobs"),
        ("reject", 1, 2.0, "below_threshold"),
        ("discard", 2, 5),
        ("step", 1, "large", 6, None),
        ("draft", 2, 5, False),
        ("judgement", 2, 9.0, "logprobs"),
        ("accept", 2, 9.0, None),
        ("step", 2, "small", 5, "answer"),
        ("final", "5", 3, {"small": 2, "large": 1}, "answer"),
    ]
    assert job.events_named("draft")[1]["text"] == "2 + 3 = 6."
    # small: drafts 6 + 6 + 5 and the discarded 5; large: three one-token judgements
    # and one step (6).
    assert (job.tokens("small"), job.calls_to("small")) == (22, 4)
    assert (job.tokens("large"), job.calls_to("large")) == (9, 4)
    details = job.result["details"]
    assert (details["accepted"], details["rejected"], details["discarded_tokens"]) == (2, 1, 5)


async def test_sequential_mode_drafts_only_what_it_uses(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(script(*rules()))
    job = await solve(rt, {"kind": "spec_reason", "pipeline": False})
    assert job.answer == "5"
    assert [n for n, _ in job.events].count("discard") == 0
    assert [a["speculative"] for a in job.events_named("draft")] == [False, False, False]
    assert [(a["step"], a["by"]) for a in job.events_named("step")] == [
        (0, "small"),
        (1, "large"),
        (2, "small"),
    ]
    # The paper's loop: 6 + 6 + 5 drafted, nothing wasted.
    assert (job.tokens("small"), job.calls_to("small")) == (17, 3)
    assert (job.tokens("large"), job.calls_to("large")) == (9, 4)


async def test_threshold_decides_acceptance(rt: Runtime, simulator: Simulator) -> None:
    # The same script with a threshold of 1: the wrong step 1 (score 2) is accepted and
    # the small model's own conclusion stands.
    simulator.set_config(script(*rules()))
    job = await solve(rt, {"kind": "spec_reason", "threshold": 1})
    assert job.answer == "6"
    assert [(n, a["step"]) for n, a in job.events if n in ("accept", "reject")] == [
        ("accept", 0),
        ("accept", 1),
        ("accept", 2),
    ]
    assert (job.tokens("small"), job.tokens("large")) == (17, 3)


async def test_unreadable_judgement_and_yes_no_judge(rt: Runtime, simulator: Simulator) -> None:
    # A judge that answers with no digit: no score, so the large model writes the step.
    simulator.set_config(script(*rules(judge_step1="Fine")))
    job = await solve(rt, {"kind": "spec_reason"})
    assert job.answer == "5"
    assert job.events_named("judgement")[1] == {
        "step": 1,
        "score": None,
        "source": "none",
        "threshold": 7.0,
    }
    assert job.events_named("reject")[0]["reason"] == "unreadable"

    # Yes/No judge: 9 x P(Yes); the scripted "Yes" has p = e^-0.05, "No" leaves 1 - that.
    simulator.set_config(
        script(
            Rule(model="sim-large", match=r"= 6\.\nuser: Is the last step correct", replies=["No"]),
            Rule(model="sim-large", match=r"\nuser: Is the last step correct", replies=["Yes"]),
            *rules()[3:],
        )
    )
    job = await solve(rt, {"kind": "spec_reason", "judge": "yes_no"})
    assert job.answer == "5"
    scores = [(a["score"], a["source"]) for a in job.events_named("judgement")]
    assert scores == [(8.5611, "logprobs"), (0.4389, "logprobs"), (8.5611, "logprobs")]


async def test_answer_role_rewrites_the_conclusion(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(script(*rules()))
    job = await solve(rt, {"kind": "spec_reason", "answer_role": "large"})
    assert job.answer == "5"
    assert job.events_named("final_answer") == [
        {"step": 2, "by": "large", "replaces": "small", "answer": "5", "proposed": "5"}
    ]
    assert job.events_named("step")[2]["by"] == "large"
    # The large model's final step ("The answer is 5.", 5 tokens) on top of the 9 before.
    assert (job.tokens("small"), job.tokens("large")) == (22, 14)


@pytest.mark.parametrize(
    ("pipeline", "budget", "spent"),
    [
        # Steps of at most 16 tokens. Pipelined: draft 0 (6), judgement 0 (1) with the
        # draft of step 1 (6), judgement 1 (1) with the discarded draft of step 2 (5),
        # the large step 1 (6) = 25 of 40; step 2's draft cannot reserve 16 of the 15 left.
        (True, 40, 25),
        # Sequential: 6 + 1 + 6 + 1 + 6 = 20 of 30; 10 left cannot pay for 16.
        (False, 30, 20),
    ],
)
async def test_tight_budget_returns_the_chain_so_far(
    rt: Runtime, simulator: Simulator, pipeline: bool, budget: int, spent: int
) -> None:
    simulator.set_config(script(*rules()))
    job = await solve(
        rt,
        {"kind": "spec_reason", "step_tokens": 16, "pipeline": pipeline},
        budget={"max_tokens": budget},
    )
    assert job.result["budget_exhausted"] is True
    assert job.tokens() == spent <= budget
    assert job.answer == "5"  # the last number of "We add 2 and 3.\n\n2 + 3 = 5."
    assert [n for n, _ in job.events][-3:] == ["step", "budget_exhausted", "final"]
    assert job.events[-1][1] == {
        "answer": "5",
        "steps": 2,
        "steps_by": {"small": 1, "large": 1},
        "end": "budget_exhausted",
    }


async def test_strict_replay_makes_no_model_calls(rt: Runtime, simulator: Simulator) -> None:
    simulator.set_config(script(*rules()))
    job = await solve(rt, {"kind": "spec_reason"})
    before = simulator.stats.requests
    again = await replay(rt, job.job_id)
    assert simulator.stats.requests == before
    assert again.result == job.result
    assert again.events == job.events


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"threshold": 10}, "strategy.threshold"),
        ({"step_tokens": 0}, "strategy.step_tokens"),
        ({"judge": "vibes"}, "strategy.judge"),
        ({"judge_top_logprobs": 21}, "strategy.judge_top_logprobs"),
        ({"step_delimiter": ""}, "strategy.step_delimiter"),
    ],
)
async def test_bad_params_name_the_field(rt: Runtime, params: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        await submit_job(
            rt.sessions, rt.pools, question=QUESTION, strategy={"kind": "spec_reason", **params}
        )
    assert caught.value.field == field


def test_judgement_shares_the_prefix_of_the_large_models_steps() -> None:
    # A prefix-caching server pays only for what follows the chain: the judgement starts
    # with exactly the messages of the large role's own step requests (whose system
    # prompt carries the judge's rule), then asks its short question.
    params = spec_reason.Params()
    chain = "We add 2 and 3.\n\n2 + 3 = 5."
    step = step_request(QUESTION, chain, params.step_config(), role="large", seed=None)
    judge = spec_reason.judge_messages(QUESTION, chain, params)
    assert step.messages is not None
    assert judge[:3] == step.messages
    assert judge[0]["content"].endswith(spec_reason.SCORE_RULE)
    assert judge[3:] == [
        {"role": "user", "content": "Score the last step."},
        {"role": "assistant", "content": "Score: "},
    ]
    small = step_request(QUESTION, chain, params.step_config(), role="small", seed=None)
    assert small.messages is not None
    assert small.messages[0]["content"] == STEP_SYSTEM
