"""``divide_then_aggregate``: plan tool calls as a DAG, run independent ones at once, aggregate.

After Zhu et al., *Divide-Then-Aggregate: An Efficient Tool Learning Method via Parallel
Tool Invocation* (DTA-Llama, 2025): instead of one tool call per model turn (ReAct) the
model divides the task into calls whose dependencies form a DAG, the calls of each level
run in parallel, and the model aggregates their results, then answers or plans again.
Fewer model turns and less wall time than a ReAct loop for the same calls.

Here the model writes the plan as a JSON array (the format is in the prompt): ``[{"id":
"a", "tool": "python", "arguments": {"code": "..."}, "after": []}, ...]``. A call lists
in ``after`` the calls it needs, and may quote their output as ``{{id}}`` in a string
argument. The plan is validated (shape, known tools, known and declared dependencies,
no cycles, at most ``max_calls``); an invalid plan gets ``repair_rounds`` corrections,
naming what is wrong. A first plan still invalid ends the job without an answer, saying
why; a later one (results are in) is followed by one request for the answer. Each level of
the DAG runs concurrently through ``ctx.tools`` (journaled: a resume executes nothing
twice, a strict replay nothing), issued in plan order. A call whose dependency failed is
skipped. Then the model sees every result and answers, or plans another round (up to
``max_rounds``; the last must answer). When the budget runs out, the answer is the
number the last successful call printed, if any.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from strategies.protocol import (
    BudgetExhausted,
    Context,
    Message,
    ModelRequest,
    StrategyResult,
    Tool,
    ToolResult,
    role_field,
    tool_field,
)
from strategies.shared.answers import extract_answer
from strategies.shared.programs import answer_of
from strategies.shared.prompts import solve_messages

PLAN_SYSTEM = """\
Solve the problem with tool calls. The tools:
{tools}

Reply with a plan: a JSON array of calls and nothing else. For example, for "How many \
hours are in 3 weeks and 2 days?" with the python tool:
[{{"id": "a", "tool": "python", "arguments": {{"code": "print(3 * 7 * 24)"}}, "after": []}},
 {{"id": "b", "tool": "python", "arguments": {{"code": "print(2 * 24)"}}, "after": []}},
 {{"id": "c", "tool": "python", "arguments": {{"code": "print({{{{a}}}} + {{{{b}}}})"}}, \
"after": ["a", "b"]}}]
"id" names a call (letters, digits, _). "after" lists the calls whose results this call \
needs; it may quote such a result as {{{{id}}}} in a string argument. Calls that do not \
depend on each other run at the same time, so list only real dependencies."""
AGGREGATE = (
    "Results:\n{results}\n\nIf they answer the problem, reply with the answer as "
    "'The answer is N.' If more calls are needed, reply with a new JSON array of calls "
    "instead (new ids; they may use the results above)."
)
FINAL = "Results:\n{results}\n\nReply with the answer now, as 'The answer is N.'"
ANSWER_NOW = "No more calls. Reply with the answer, as 'The answer is N.'"
REPAIR = "That plan is invalid: {reason}. Reply with the corrected JSON array only."
MAX_RESULT = 2000
"""Characters of one call's output shown to the model."""
_ID = r"[A-Za-z0-9_]{1,32}"
_QUOTE = re.compile(r"\{\{(" + _ID + r")\}\}")


class PlannedCall(BaseModel):
    """One call of a plan, as the model writes it."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=f"^{_ID}$")
    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    after: list[str] = Field(default_factory=list)


_PLAN: TypeAdapter[list[PlannedCall]] = TypeAdapter(list[PlannedCall])


class PlanError(ValueError):
    """A plan that cannot run; the message says why, for the model and the trace."""


class Params(BaseModel):
    """Plan a DAG of tool calls, run each level in parallel, aggregate; repeat."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["divide_then_aggregate"] = "divide_then_aggregate"
    role: str = role_field(default="small", description="Model role that plans and aggregates.")
    tools: list[str] = tool_field(
        default=["python"],
        description="Configured tools a plan may call.",
        min_length=1,
        max_length=16,
    )
    max_rounds: int = Field(
        default=2, ge=1, le=8, description="Plan-run-aggregate rounds; the last must answer."
    )
    max_calls: int = Field(default=8, ge=1, le=32, description="Calls one plan may hold.")
    repair_rounds: int = Field(
        default=1, ge=0, le=3, description="Corrections asked for after an invalid plan."
    )
    plan_tokens: int = Field(default=512, ge=1, le=32768, description="Per plan.")
    answer_tokens: int = Field(default=256, ge=1, le=32768, description="Per aggregation.")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)

    @field_validator("tools")
    @classmethod
    def _distinct(cls, tools: list[str]) -> list[str]:
        if len(set(tools)) != len(tools):
            raise ValueError("each tool may be named once")
        return tools


def read_plan(
    text: str, tools: list[str], done: set[str], max_calls: int
) -> list[list[PlannedCall]]:
    """The plan in a reply as levels of independent calls, in plan order within a level.

    ``done`` holds the ids of earlier rounds' calls: a call may depend on them (they count
    as finished) but not reuse their ids. Raises ``PlanError`` saying what is wrong.
    """
    start, end = text.find("["), text.rfind("]")
    if start < 0 or end < start:
        raise PlanError("no JSON array of calls in the reply")
    try:
        calls = _PLAN.validate_json(text[start : end + 1])
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise PlanError(f"{where or 'the plan'}: {first['msg']}") from None
    if not calls:
        raise PlanError("the plan has no calls")
    if len(calls) > max_calls:
        raise PlanError(f"{len(calls)} calls; a plan may hold at most {max_calls}")
    ids = [c.id for c in calls]
    for call in calls:
        if call.id in done:
            taken = ", ".join(sorted(done))
            raise PlanError(f"id {call.id!r} was used in an earlier round ({taken}); use new ids")
        if ids.count(call.id) > 1:
            raise PlanError(f"id {call.id!r} is used twice")
        if call.tool not in tools:
            known = ", ".join(tools)
            raise PlanError(f"call {call.id}: no tool named {call.tool!r}; tools: {known}")
        for dep in call.after:
            if dep not in ids and dep not in done:
                raise PlanError(f"call {call.id} is after {dep!r}, which is no call")
        quoted = set(_QUOTE.findall(json.dumps(call.arguments))) & ({*ids} | done)
        undeclared = sorted(quoted - set(call.after))
        if undeclared:
            raise PlanError(f"call {call.id} quotes {undeclared[0]} without listing it in after")
    return _levels(calls)


def _levels(calls: list[PlannedCall]) -> list[list[PlannedCall]]:
    """Kahn's layering: a call's level is one past its deepest dependency in this plan."""
    planned = {c.id for c in calls}
    level: dict[str, int] = {}
    pending = list(calls)
    while pending:
        ready = [c for c in pending if all(d in level or d not in planned for d in c.after)]
        if not ready:
            cycle = ", ".join(c.id for c in pending)
            raise PlanError(f"calls {cycle} depend on each other in a cycle")
        for call in ready:
            level[call.id] = 1 + max((level[d] for d in call.after if d in planned), default=-1)
        pending = [c for c in pending if c.id not in level]
    depth = max(level.values()) + 1
    return [[c for c in calls if level[c.id] == n] for n in range(depth)]


async def run(problem: str, ctx: Context, params: Params) -> StrategyResult:
    model = ctx.models[params.role]
    listing = "\n".join(_describe(ctx.tools[name]) for name in params.tools)
    messages: list[Message] = solve_messages(
        problem, PLAN_SYSTEM.format(tools=listing), ctx.conversation
    )
    results: dict[str, ToolResult] = {}  # every call run so far, by id
    best: str | None = None
    exhausted = False

    async def ask(max_tokens: int) -> str | None:
        nonlocal exhausted
        request = ModelRequest(
            messages=messages,
            max_tokens=max_tokens,
            temperature=params.temperature,
            seed=ctx.rng.randrange(2**31),
        )
        try:
            generation = await model.generate(request)
        except BudgetExhausted as exc:
            ctx.trace("budget_exhausted", what=exc.what)
            exhausted = True
            return None
        text = generation.choices[0].text
        messages.append({"role": "assistant", "content": text})
        return text

    reply = await ask(params.plan_tokens)
    for round_ in range(params.max_rounds):
        if reply is None:
            break
        levels = await _plan(ctx, params, reply, set(results), round_, messages, ask)
        if levels is None and round_ > 0:
            # Results are in, but neither an answer nor a valid plan came: ask once more.
            messages.append({"role": "user", "content": ANSWER_NOW})
            reply = await ask(params.answer_tokens)
            if reply is not None and not _is_plan(reply):
                answer = extract_answer(reply)
                ctx.trace("aggregate", round=round_, decision="answer", answer=answer)
                return StrategyResult(
                    answer=answer,
                    text=reply,
                    details={"rounds": round_, "tool_calls": len(results)},
                )
        if levels is None:
            return StrategyResult(
                answer=None,
                text=reply or "",
                details={
                    "error": "no valid plan",
                    "rounds": round_ + 1,
                    "tool_calls": len(results),
                },
            )
        for depth, level in enumerate(levels):
            ctx.trace("level", round=round_, level=depth, width=len(level),
                      calls=[c.id for c in level])  # fmt: skip
            async with ctx.span("level", round=round_, level=depth, width=len(level)):
                runs = [_run_call(ctx, call, results) for call in level]
                outcomes = await asyncio.gather(*runs, return_exceptions=True)
            spent: BudgetExhausted | None = None
            for call, outcome in zip(level, outcomes, strict=True):
                if isinstance(outcome, BudgetExhausted):
                    spent = spent or outcome
                elif isinstance(outcome, BaseException):
                    raise outcome
                else:
                    results[call.id] = outcome
                    if outcome.ok and answer_of(outcome.output) is not None:
                        best = answer_of(outcome.output)
            if spent is not None:
                ctx.trace("budget_exhausted", what=spent.what, round=round_, level=depth)
                exhausted = True
                break
        if exhausted:
            break
        last = round_ == params.max_rounds - 1
        ran = [c for level in levels for c in level]
        shown = "\n".join(_result_line(c.id, c.tool, results.get(c.id)) for c in ran)
        messages.append(
            {"role": "user", "content": (FINAL if last else AGGREGATE).format(results=shown)}
        )
        reply = await ask(params.answer_tokens)
        if reply is None:
            break
        if not last and _is_plan(reply):
            ctx.trace("aggregate", round=round_, decision="plan")
            continue
        answer = extract_answer(reply)
        ctx.trace("aggregate", round=round_, decision="answer", answer=answer)
        return StrategyResult(
            answer=answer,
            text=reply,
            details={"rounds": round_ + 1, "tool_calls": len(results)},
        )
    ctx.trace("answer", answer=best, source="last tool output")
    return StrategyResult(
        answer=best,
        text="",
        budget_exhausted=exhausted or ctx.budget.exhausted(),
        details={"tool_calls": len(results)},
    )


async def _plan(
    ctx: Context,
    params: Params,
    reply: str,
    done: set[str],
    round_: int,
    messages: list[Message],
    ask: Callable[[int], Awaitable[str | None]],
) -> list[list[PlannedCall]] | None:
    """The reply's plan as levels, after up to ``repair_rounds`` corrections; None if no
    valid plan came (traced)."""
    for attempt in range(params.repair_rounds + 1):
        try:
            levels = read_plan(reply, params.tools, done, params.max_calls)
        except PlanError as exc:
            ctx.trace("plan_invalid", round=round_, attempt=attempt, reason=str(exc))
            if attempt == params.repair_rounds:
                return None
            messages.append({"role": "user", "content": REPAIR.format(reason=exc)})
            answer: str | None = await ask(params.plan_tokens)
            if answer is None:
                return None
            reply = answer
            continue
        ctx.trace(
            "plan",
            round=round_,
            calls=[{"id": c.id, "tool": c.tool, "after": c.after} for lv in levels for c in lv],
            levels=[[c.id for c in lv] for lv in levels],
            repaired=attempt > 0,
        )
        return levels
    return None


async def _run_call(ctx: Context, call: PlannedCall, results: dict[str, ToolResult]) -> ToolResult:
    failed = [d for d in call.after if d not in results or not results[d].ok]
    if failed:
        return ToolResult(error=f"skipped: {', '.join(failed)} failed")
    arguments = _quote(call.arguments, results)
    return await ctx.tools[call.tool].call(arguments)


def _quote(value: Any, results: dict[str, ToolResult]) -> Any:
    """``{{id}}`` in string arguments replaced by that call's output (stripped)."""
    if isinstance(value, str):
        return _QUOTE.sub(
            lambda m: results[m.group(1)].output.strip() if m.group(1) in results else m.group(0),
            value,
        )
    if isinstance(value, list):
        return [_quote(v, results) for v in value]
    if isinstance(value, dict):
        return {k: _quote(v, results) for k, v in value.items()}
    return value


def _is_plan(text: str) -> bool:
    """Whether an aggregation reply is another plan rather than an answer."""
    start = text.find("[")
    return start >= 0 and text[start + 1 :].lstrip().startswith("{")


def _describe(tool: Tool) -> str:
    parameters = tool.parameters.get("properties", {})
    return f"- {tool.name}({', '.join(parameters)}): {tool.description}"


def _result_line(id_: str, tool: str, result: ToolResult | None) -> str:
    if result is None:
        return f"- {id_} ({tool}): not run"
    text = result.output.strip() if result.ok else f"failed: {result.error}"
    if len(text) > MAX_RESULT:
        text = text[:MAX_RESULT] + "… (cut)"
    return f"- {id_} ({tool}): {text or '(no output)'}"
