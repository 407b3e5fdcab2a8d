"""``tool_agent``: a ReAct loop over the job's tools with native function calling.

Yao et al., *ReAct: Synergizing Reasoning and Acting in Language Models* (ICLR 2023): the
model alternates thinking and acting, reads what each action returned, and answers once it
knows. Here the actions are function calls: every turn offers the configured ``tools``
(``ModelRequest.tools``, ``tool_choice: "auto"``); a reply with ``tool_calls`` is run and
each result goes back as a ``tool`` message; a reply in text is the answer. Several calls
in one turn run concurrently (parallel function calling), issued in the model's order so
their journal keys do not depend on timing. Every call goes through ``ctx.tools``: a
resume executes none twice and a strict replay executes none.

A call to a tool that was not offered, or with arguments that are not a JSON object,
is not executed: its ``tool`` message says what was wrong, so the model can recover; a
call left in the text that the pool could not read back (broken JSON) is answered the
same way rather than read as the answer. The last of ``max_steps`` turns is asked to
answer without tools (``tool_choice: "none"``). When the budget runs out first, or the
last turn still calls, the answer is the number the last successful tool call printed,
if any. Cost: up to ``max_steps`` calls of up to ``max_tokens``, and
the tool calls the model makes.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from strategies.protocol import (
    BudgetExhausted,
    Context,
    Message,
    ModelRequest,
    StrategyResult,
    ToolCall,
    ToolResult,
    role_field,
    tool_field,
)
from strategies.shared.answers import extract_answer
from strategies.shared.programs import answer_of
from strategies.shared.prompts import solve_messages

AGENT_SYSTEM = (
    "Solve the problem. Call the tools to compute (a program prints what you need); do "
    "no arithmetic yourself, and make several calls at once when they do not depend on "
    "each other. After you see the results, reply with the answer."
)
# No answer format in the instruction: with "finish with 'The answer is N.'" in it, both
# embedded Qwen2.5-Coder models answered at once and called nothing (2026-12-05).
UNREAD = (
    "That tool call could not be read. Call one of the tools ({tools}) with valid JSON "
    "arguments, or reply with the answer."
)
FINAL = "No more tool calls. Reply with the answer now, as 'The answer is N.'"
MAX_UNREAD = 400
"""Characters kept of a reply holding a call that could not be read."""
MAX_TOOL_MESSAGE = 4000
"""Characters of a tool's output shown to the model (prompt tokens are time on CPU)."""


class Params(BaseModel):
    """A ReAct loop: the model calls tools until it answers in text."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["tool_agent"] = "tool_agent"
    role: str = role_field(default="small", description="Model role that acts and answers.")
    tools: list[str] = tool_field(
        default=["python"],
        description="Configured tools offered to the model as functions.",
        min_length=1,
        max_length=16,
    )
    max_steps: int = Field(
        default=6, ge=1, le=32, description="Model turns; the last must answer without tools."
    )
    max_tokens: int = Field(default=512, ge=1, le=32768, description="Per model turn.")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    system: str | None = Field(default=None, description="Replaces the default instruction.")

    @field_validator("tools")
    @classmethod
    def _distinct(cls, tools: list[str]) -> list[str]:
        if len(set(tools)) != len(tools):
            raise ValueError("each tool may be named once")
        return tools


async def run(problem: str, ctx: Context, params: Params) -> StrategyResult:
    model = ctx.models[params.role]
    functions = [ctx.tools[name].as_function() for name in params.tools]
    tools = ", ".join(params.tools)
    messages: list[Message] = solve_messages(
        problem, params.system or AGENT_SYSTEM, ctx.conversation
    )
    best: str | None = None  # what the last successful tool call printed
    executed = 0
    for step in range(params.max_steps):
        last = step == params.max_steps - 1
        request = ModelRequest(
            messages=[*messages, {"role": "user", "content": FINAL}] if last else messages,
            tools=functions,
            tool_choice="none" if last else "auto",
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            seed=ctx.rng.randrange(2**31),
        )
        try:
            generation = await model.generate(request)
        except BudgetExhausted as exc:
            ctx.trace("budget_exhausted", what=exc.what, step=step)
            break
        choice = generation.choices[0]
        if not choice.tool_calls and not last and _unread_call(choice.text, params.tools):
            # A call the server could not read back (broken JSON in the text): say so
            # rather than take a number out of the call's arguments as the answer.
            ctx.trace("step", step=step, tool_calls=[], unreadable=True)
            # Kept short: a small model repeating its call fills the context in 3 turns.
            shown = choice.text[:MAX_UNREAD] + ("…" if len(choice.text) > MAX_UNREAD else "")
            messages.append({"role": "assistant", "content": shown})
            messages.append({"role": "user", "content": UNREAD.format(tools=tools)})
            continue
        if not choice.tool_calls or last:
            if choice.tool_calls or _unread_call(choice.text, params.tools):
                # Still calling when it must answer: the numbers in a call are no answer.
                answer, source = best, "last tool output"
            else:
                answer, source = extract_answer(choice.text), "reply"
            ctx.trace("answer", step=step, answer=answer, tool_calls=executed, source=source)
            return StrategyResult(
                answer=answer,
                text=choice.text,
                details={"steps": step + 1, "tool_calls": executed},
            )
        calls = choice.tool_calls
        ids = [f"call_{step}_{i}" for i in range(len(calls))]
        problems = [_problem(call, params.tools) for call in calls]
        ctx.trace(
            "step",
            step=step,
            tool_calls=[call.name for call in calls],
            **({"refused": [p for p in problems if p]} if any(problems) else {}),
        )
        messages.append(
            {
                "role": "assistant",
                "content": choice.text or None,
                "tool_calls": [
                    {
                        "id": id_,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    }
                    for id_, call in zip(ids, calls, strict=True)
                ],
            }
        )
        # gather starts the calls in this order, and each takes its journal key before
        # its first await: the keys follow the model's order, never the timing.
        runs = [
            _call(ctx, call) if problem_ is None else _refused(problem_)
            for call, problem_ in zip(calls, problems, strict=True)
        ]
        outcomes = await asyncio.gather(*runs, return_exceptions=True)
        exhausted = [o for o in outcomes if isinstance(o, BudgetExhausted)]
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, BudgetExhausted):
                raise outcome
        results = [o for o in outcomes if isinstance(o, ToolResult)]
        executed += sum(
            1
            for outcome, problem_ in zip(outcomes, problems, strict=True)
            if problem_ is None and isinstance(outcome, ToolResult)
        )
        for result in results:
            if result.ok and answer_of(result.output) is not None:
                best = answer_of(result.output)
        if exhausted:
            ctx.trace("budget_exhausted", what=exhausted[0].what, step=step)
            break
        for id_, result in zip(ids, results, strict=True):
            messages.append({"role": "tool", "tool_call_id": id_, "content": _observation(result)})
    ctx.trace("answer", answer=best, tool_calls=executed, source="last tool output")
    return StrategyResult(
        answer=best,
        text="",
        budget_exhausted=ctx.budget.exhausted(),
        details={"tool_calls": executed},
    )


def _problem(call: ToolCall, offered: list[str]) -> str | None:
    """Why a call cannot run (unknown tool, arguments that are not a JSON object)."""
    if call.name not in offered:
        return f"there is no tool named {call.name!r}; the tools are: {', '.join(offered)}"
    try:
        arguments = json.loads(call.arguments or "{}")
    except json.JSONDecodeError as exc:
        return f"the arguments of {call.name} are not valid JSON ({exc.msg} at {exc.pos})"
    if not isinstance(arguments, dict):
        return f"the arguments of {call.name} must be a JSON object"
    return None


async def _call(ctx: Context, call: ToolCall) -> ToolResult:
    arguments: dict[str, Any] = json.loads(call.arguments or "{}")
    return await ctx.tools[call.name].call(arguments)


async def _refused(problem: str) -> ToolResult:
    return ToolResult(error=f"not run: {problem}")


def _unread_call(text: str, offered: list[str]) -> bool:
    """Whether a reply without calls still reads like one: ``"name": "<offered tool>"``,
    or any ``"name": ..., "arguments"`` (a call to a function that was not offered)."""
    names = "|".join(re.escape(name) for name in offered)
    return (
        re.search(rf'"name"\s*:\s*"(?:{names})"', text) is not None
        or re.search(r'"name"\s*:\s*"[^"]*"\s*,\s*"(?:arguments|parameters)"', text) is not None
    )


def _observation(result: ToolResult) -> str:
    text = result.output if result.ok else f"Error: {result.error}\n{result.output}".strip()
    if len(text) > MAX_TOOL_MESSAGE:
        text = text[:MAX_TOOL_MESSAGE] + "… (cut)"
    return text or "(no output: a program must print what you need)"
