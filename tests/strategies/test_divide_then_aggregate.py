"""``divide_then_aggregate``: the simulator writes plans (JSON DAGs of tool calls), the real
``python`` tool runs each level's calls concurrently in the bubblewrap sandbox, and the
simulator aggregates. Plan validation is also checked on its own (no model, no sandbox)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core.db import repo
from core.runtime import Runtime
from core.simulator.config import Rule
from core.simulator.server import Simulator
from strategies.tool_use.divide_then_aggregate import PlanError, read_plan
from tests.fixtures.sandbox import require_sandbox
from tests.strategies.helpers import replay, script, solve

QUESTION = "A baker makes 12 muffins in the morning and 3 times as many later. How many in all?"
SPEC = {"kind": "divide_then_aggregate"}
SLOW = "import time\ntime.sleep(0.3)\nprint({})"


def call(
    id_: str, code: str, after: list[str] | None = None, tool: str = "python"
) -> dict[str, Any]:
    return {"id": id_, "tool": tool, "arguments": {"code": code}, "after": after or []}


def plan(*calls: dict[str, Any]) -> str:
    return json.dumps(list(calls))


DAG = plan(
    call("a", SLOW.format(12)),
    call("b", SLOW.format("3 * 12")),
    call("c", "print({{a}} + {{b}})", after=["a", "b"]),
)


async def test_independent_calls_run_at_once_and_the_dependent_one_reads_their_results(
    rt: Runtime, simulator: Simulator
) -> None:
    require_sandbox()
    simulator.set_config(
        script(
            Rule(match=r"Results:.*- c \(python\): 48", replies=["The answer is 48."]),
            Rule(match="muffins", replies=[f"```json\n{DAG}\n```"]),
        )
    )
    job = await solve(rt, SPEC, question=QUESTION)
    assert job.answer == "48"
    (planned,) = job.events_named("plan")
    assert planned["levels"] == [["a", "b"], ["c"]] and planned["repaired"] is False
    assert [(e["width"], e["calls"]) for e in job.events_named("level")] == [
        (2, ["a", "b"]), (1, ["c"]),
    ]  # fmt: skip
    assert job.events_named("aggregate") == [{"round": 0, "decision": "answer", "answer": "48"}]
    assert job.calls_to("small") == 2  # one plan, one aggregation

    async with rt.sessions() as session:
        spans = await repo.list_spans(session, job.job_id)
    calls = [s for s in spans if s.kind == "tool_call"]
    a, b, c = calls
    assert [s.attributes["output"] for s in calls] == ["12\n", "36\n", "48\n"]
    # c ran with its dependencies' outputs quoted in, after both had ended.
    assert json.loads(c.attributes["arguments"]) == {"code": "print(12 + 36)"}
    assert a.end_ts is not None and b.end_ts is not None and c.end_ts is not None
    assert a.start_ts < b.end_ts and b.start_ts < a.end_ts  # a and b overlapped
    assert c.start_ts >= max(a.end_ts, b.end_ts)
    # Each level is a span holding its calls (the dashboard's tree shows the parallel group).
    levels = {s.id: s.attributes for s in spans if s.name == "level"}
    assert [levels[s.parent_id or ""]["width"] for s in calls] == [2, 2, 1]

    requests = simulator.stats.requests
    strict = await replay(rt, job.job_id)
    assert strict.answer == "48" and simulator.stats.requests == requests
    usage = strict.outcome.usage or {}
    assert (usage["tool_executions"], usage["tool_journal_hits"]) == (0, 3)


async def test_a_cyclic_plan_gets_a_repair_round_naming_the_cycle(
    rt: Runtime, simulator: Simulator
) -> None:
    require_sandbox()
    cyclic = plan(call("a", "print(12)", after=["b"]), call("b", "print(36)", after=["a"]))
    fixed = plan(call("a", "print(12)"), call("b", "print(36)"))
    simulator.set_config(
        script(
            Rule(match=r"- a \(python\): 12\n- b \(python\): 36", replies=["The answer is 48."]),
            Rule(match="calls a, b depend on each other in a cycle", replies=[fixed]),
            Rule(match="muffins", replies=[cyclic]),
        )
    )  # fmt: skip
    job = await solve(rt, SPEC, question=QUESTION)
    assert job.answer == "48"
    (invalid,) = job.events_named("plan_invalid")
    assert invalid["reason"] == "calls a, b depend on each other in a cycle"
    (planned,) = job.events_named("plan")
    assert planned["levels"] == [["a", "b"]] and planned["repaired"] is True
    assert job.calls_to("small") == 3  # plan, repair, aggregation


async def test_a_plan_still_invalid_after_its_repair_ends_the_job_without_an_answer(
    rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(
        script(Rule(match="muffins", replies=[plan(call("a", "print(48)", tool="shell"))]))
    )
    job = await solve(rt, SPEC, question=QUESTION)
    assert job.outcome.status == "succeeded" and job.answer is None
    assert job.result["details"]["error"] == "no valid plan"
    reasons = [e["reason"] for e in job.events_named("plan_invalid")]
    assert reasons == ["call a: no tool named 'shell'; tools: python"] * 2
    assert not [s for s in job.spans if s.kind == "tool_call"]


async def test_the_aggregation_may_plan_a_second_round_that_uses_the_first(
    rt: Runtime, simulator: Simulator
) -> None:
    require_sandbox()
    simulator.set_config(
        script(
            Rule(match=r"Reply with the answer now", replies=["The answer is 48."]),
            Rule(match=r"Results:\n- a \(python\): 36",
                 replies=[plan(call("b", "print(12 + {{a}})", after=["a"]))]),
            Rule(match="muffins", replies=[plan(call("a", "print(3 * 12)"))]),
        )
    )  # fmt: skip
    job = await solve(rt, SPEC, question=QUESTION)
    assert job.answer == "48"
    assert [(e["round"], e["decision"]) for e in job.events_named("aggregate")] == [
        (0, "plan"), (1, "answer"),
    ]  # fmt: skip
    assert [p["levels"] for p in job.events_named("plan")] == [[["a"]], [["b"]]]
    outputs = [s.attributes["output"] for s in job.spans if s.kind == "tool_call"]
    assert outputs == ["36\n", "48\n"]


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("The answer is 48.", "no JSON array of calls in the reply"),
        ("[]", "the plan has no calls"),
        ('[{"id": "a", "tool": "python"}, {"id": "a", "tool": "python"}]', "id 'a' is used twice"),
        ('[{"id": "a", "tool": "python", "after": ["z"]}]', "call a is after 'z', which"),
        ('[{"id": "a", "tool": "python", "arguments": {"code": "print({{p}})"}}]',
         "call a quotes p without listing it in after"),
        ('[{"id": "a b", "tool": "python"}]', "0.id: String should match pattern"),
        ('[{"id": "a", "tool": "python", "when": 1}]', "0.when: Extra inputs are not permitted"),
    ],
)  # fmt: skip
def test_plan_validation_names_what_is_wrong(reply: str, reason: str) -> None:
    with pytest.raises(PlanError) as invalid:
        read_plan(reply, ["python"], {"p"}, max_calls=4)
    assert str(invalid.value).startswith(reason)


def test_a_plan_is_cut_into_levels_of_independent_calls_in_plan_order() -> None:
    text = plan(
        call("d", "", after=["b", "c"]), call("b", "", after=["a"]), call("a", ""),
        call("c", ""), call("e", "", after=["p"]),
    )  # fmt: skip
    levels = read_plan(text, ["python"], {"p"}, max_calls=5)
    assert [[c.id for c in level] for level in levels] == [["a", "c", "e"], ["b"], ["d"]]
    with pytest.raises(PlanError, match="5 calls; a plan may hold at most 4"):
        read_plan(text, ["python"], {"p"}, max_calls=4)


async def test_a_spent_tool_budget_answers_with_the_last_output_so_far(
    rt: Runtime, simulator: Simulator
) -> None:
    require_sandbox()
    simulator.set_config(script(Rule(match="muffins", replies=[DAG])))
    # Two tool calls allowed: level 0 (a, b) runs, c is refused by the budget.
    job = await solve(rt, SPEC, question=QUESTION, budget={"max_tool_calls": 2})
    assert job.answer == "36" and job.result["budget_exhausted"] is True
    (spent,) = job.events_named("budget_exhausted")
    assert spent == {"what": "tool_calls", "round": 0, "level": 1}
    assert job.events_named("answer") == [{"answer": "36", "source": "last tool output"}]
    assert job.calls_to("small") == 1  # no aggregation was paid for


async def test_an_invalid_later_plan_is_followed_by_a_request_for_the_answer(
    rt: Runtime, simulator: Simulator
) -> None:
    require_sandbox()
    # What the embedded 0.5B model did: a second plan reusing the first round's ids.
    simulator.set_config(
        script(
            Rule(match="No more calls", replies=["The answer is 48."]),
            Rule(match=r"Results:\n- a \(python\): 36",
                 replies=[plan(call("a", "print(12 + 36)"))]),
            Rule(match="muffins", replies=[plan(call("a", "print(3 * 12)"))]),
        )
    )  # fmt: skip
    job = await solve(rt, SPEC, question=QUESTION)
    assert job.answer == "48"
    reasons = [e["reason"] for e in job.events_named("plan_invalid")]
    assert reasons == ["id 'a' was used in an earlier round (a); use new ids"] * 2
    assert [e["decision"] for e in job.events_named("aggregate")] == ["plan", "answer"]
    assert len([s for s in job.spans if s.kind == "tool_call"]) == 1
