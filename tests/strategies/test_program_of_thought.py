"""``program_of_thought``: programs from the simulator, run for real in the bubblewrap
sandbox, journaled like model calls (resume, strict replay, fork with a what-if)."""

from __future__ import annotations

import pytest

from app.api.services import traces
from core.errors import InvalidInput
from core.jobs import create_replay, submit_job
from core.runtime import Runtime
from core.simulator.config import Rule
from core.simulator.server import Simulator
from tests.fixtures.sandbox import require_sandbox
from tests.strategies.helpers import SolvedJob, replay, script, solve, spans_of

QUESTION = "A baker makes 12 muffins in the morning and 3 times as many later. How many in all?"
GOOD = "```python\nmorning = 12\nlater = 3 * morning\nprint(morning + later)\n```"
BROKEN = "```python\nmorning = 12\nprint(morning + later)\n```"
SPEC = {"kind": "program_of_thought"}

pytestmark = pytest.mark.usefixtures("sandbox_available")


@pytest.fixture
def sandbox_available() -> None:
    require_sandbox()


def tool_calls(job: SolvedJob) -> list[dict[str, object]]:
    return [s.attributes for s in job.spans if s.kind == "tool_call"]


async def test_the_answer_comes_from_the_executed_program(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(script(Rule(match="muffins", replies=[GOOD])))
    job = await solve(rt, SPEC, question=QUESTION)
    assert job.answer == "48"
    (call,) = tool_calls(job)
    assert call["tool"] == "python" and call["journal"] == "miss" and call["ok"] is True
    assert call["output"] == "48\n"
    usage = job.outcome.usage or {}
    assert (usage["tool_calls"], usage["tool_executions"], usage["tool_journal_hits"]) == (1, 1, 0)
    assert [name for name, _ in job.events] == ["program", "execution", "answer"]


async def test_a_failing_program_gets_one_repair_round_with_its_traceback(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(
        script(
            # The repair prompt quotes the traceback: the fixed program answers it.
            Rule(match="NameError: name 'later' is not defined", replies=[GOOD]),
            Rule(match="muffins", replies=[BROKEN]),
        )
    )
    job = await solve(rt, SPEC, question=QUESTION)
    assert job.answer == "48"
    first, second = tool_calls(job)
    assert first["ok"] is False and "NameError" in str(first["error"])
    assert second["ok"] is True
    executions = job.events_named("execution")
    assert [e["ok"] for e in executions] == [False, True]


async def test_strict_replay_executes_nothing_and_a_fork_reruns_only_what_follows(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(
        script(
            Rule(match="NameError: name 'later' is not defined", replies=[GOOD]),
            Rule(match="muffins", replies=[BROKEN]),
        )
    )
    parent = await solve(rt, SPEC, question=QUESTION)
    requests = simulator.stats.requests

    strict = await replay(rt, parent.job_id)
    assert strict.answer == "48" and simulator.stats.requests == requests
    usage = strict.outcome.usage or {}
    assert (usage["tool_executions"], usage["tool_journal_hits"], usage["live_calls"]) == (0, 2, 0)
    assert [c["journal"] for c in tool_calls(strict)] == ["hit", "hit"]

    # What if the first run had printed 50? Keep the journal up to that tool call (the
    # first program and its run, entries 1-2), give the run the new output, and go on
    # live: the strategy answers from it, and nothing after it is re-executed or asked.
    child_id = await create_replay(
        rt.sessions,
        rt.pools,
        parent.job_id,
        mode="live",
        tool_result={"seq": 2, "output": "50\n"},
    )
    forked = await rt.runner.run(child_id)
    assert forked.result is not None and forked.result["answer"] == "50"
    assert simulator.stats.requests == requests  # the repair round was never needed
    spans = await spans_of(rt, child_id)
    (call,) = [s.attributes for s in spans if s.kind == "tool_call"]
    assert call["journal"] == "hit" and call["output"] == "50\n"


async def test_an_unconfigured_executor_is_refused_before_the_job_is_written(
    rt: Runtime,
) -> None:
    with pytest.raises(InvalidInput) as refused:
        await submit_job(
            rt.sessions,
            rt.pools,
            question=QUESTION,
            strategy={**SPEC, "executor": "shell"},
            tool_names=rt.settings.tool_names(),
        )
    assert refused.value.field == "strategy.executor"
    assert "'shell' is not configured" in refused.value.message


async def test_self_consistency_votes_on_what_executed_programs_printed(
    rt: Runtime, simulator: Simulator
) -> None:
    # Four programs: two print 48, one prints 47, one crashes (it abstains, not votes).
    simulator.set_config(
        script(
            Rule(
                match="muffins",
                replies=[
                    GOOD,
                    "```python\nprint(12 + 35)\n```",
                    BROKEN,
                    "```python\nprint(4 * 12)\n```",
                ],
            )
        )
    )
    job = await solve(rt, {"kind": "self_consistency", "n": 4, "executor": "python"},
                      question=QUESTION)  # fmt: skip
    assert job.answer == "48" and job.result["votes"] == {"48": 2, "47": 1}
    samples = job.events_named("sample")
    assert [s.get("executed") for s in samples] == [True, True, None, True]
    assert "NameError" in samples[2]["abstained"]
    assert len(tool_calls(job)) == 4
    strict = await replay(rt, job.job_id)
    assert strict.result["votes"] == job.result["votes"]
    assert (strict.outcome.usage or {})["tool_executions"] == 0


async def test_best_of_n_scores_candidates_by_the_verifiers_executed_program(
    rt: Runtime, simulator: Simulator
) -> None:
    candidates = Rule(
        match="muffins", model="sim-small",
        replies=["12 + 35 = 47. The answer is 47.", "The answer is 48.", "The answer is 47."],
    )  # fmt: skip
    check = Rule(match="prints it as the last line", model="sim-large", replies=[GOOD])
    simulator.set_config(script(check, candidates))
    spec = {"kind": "best_of_n", "n": 3, "execution_check": "python"}
    job = await solve(rt, spec, question=QUESTION)
    # The program printed 48: the one candidate saying 48 wins against the majority's 47,
    # and no generative judgement was paid for.
    assert job.answer == "48"
    (checked,) = job.events_named("execution_check")
    assert checked == {"answer": "48"}
    scores = job.events_named("score")
    assert [(s["answer"], s["score"], s["source"]) for s in scores] == [
        ("47", 0.0, "execution"), ("48", 1.0, "execution"), ("47", 0.0, "execution"),
    ]  # fmt: skip
    assert job.calls_to("large") == 1  # the check program only


async def test_a_failed_check_abstains_and_the_generative_verifier_decides(
    rt: Runtime, simulator: Simulator
) -> None:
    candidates = Rule(match="muffins", model="sim-small", replies=["The answer is 48."])
    check = Rule(match="prints it as the last line", model="sim-large", replies=[BROKEN])
    verdict = Rule(match="Is the proposed solution correct", model="sim-large", replies=["Yes"])
    simulator.set_config(script(check, verdict, candidates))
    spec = {"kind": "best_of_n", "n": 2, "execution_check": "python"}
    job = await solve(rt, spec, question=QUESTION)
    assert job.answer == "48"
    (checked,) = job.events_named("execution_check")
    assert checked["answer"] is None and "NameError" in checked["abstained"]
    sources = {s["source"] for s in job.events_named("score")}
    assert sources and "execution" not in sources


async def test_the_diff_of_a_what_if_fork_points_at_the_overridden_tool_result(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(script(Rule(match="muffins", replies=[GOOD])))
    parent = await solve(rt, SPEC, question=QUESTION)
    child_id = await create_replay(
        rt.sessions, rt.pools, parent.job_id, mode="live", tool_result={"seq": 2, "output": "50\n"}
    )
    await rt.runner.run(child_id)
    async with rt.sessions() as session:
        diff = await traces.diff(session, "default", parent.job_id, child_id)
    assert diff.answers == ("48", "50")
    first = diff.first_divergence
    assert first is not None and (first.index, first.reason) == (1, "response")
    assert first.a is not None and first.a.role == "tool:python" and first.a.texts == ["48\n", ""]
    assert first.b is not None and first.b.texts == ["50\n", ""]
    assert diff.deltas.live_calls == -1  # the program came from the journal
