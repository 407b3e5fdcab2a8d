"""``program_of_thought``: write a program, run it in the sandbox, answer from its output.

Chen, Ma, Wang and Cohen, *Program of Thoughts Prompting: Disentangling Computation from
Reasoning for Numerical Reasoning Tasks* (TMLR 2023), and Gao et al., *PAL: Program-aided
Language Models* (ICML 2023): the model writes the computation as a program and an
interpreter, not the model, does the arithmetic. The program runs through
``ctx.tools[executor]`` (the sandboxed ``python`` tool by default), journaled like a model
call: a resume executes nothing twice and a strict replay executes nothing at all.

When the program fails (a traceback, a limit) or prints nothing, one repair round
(``repair_rounds``) shows the model its program and the error and asks for a corrected
one, as PoT's error-feedback variant and Self-Debugging (Chen et al., ICLR 2024) do.
The answer is the number the program printed last. Cost: 1 + ``repair_rounds`` calls of
up to ``max_tokens``, and as many sandboxed runs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from strategies.protocol import (
    BudgetExhausted,
    Context,
    Message,
    ModelRequest,
    StrategyResult,
    ToolResult,
    role_field,
    tool_field,
)
from strategies.shared.programs import PROGRAM_SYSTEM, answer_of, program_of
from strategies.shared.prompts import solve_messages

REPAIR = (
    "Running your program gave this error:\n{error}\n\nWrite the corrected whole program, "
    "in one ```python block. It must print the answer as a bare number on its last line."
)
EMPTY = "Your program printed nothing. It must print the answer as a bare number."


class Params(BaseModel):
    """A program per attempt, run in the sandbox; one repair round by default."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["program_of_thought"] = "program_of_thought"
    role: str = role_field(default="small", description="Model role that writes programs.")
    executor: str = tool_field(default="python", description="Tool that runs the program.")
    max_tokens: int = Field(default=512, ge=1, le=32768, description="Per program.")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    repair_rounds: int = Field(
        default=1, ge=0, le=4, description="Corrections asked for after a failed run."
    )
    system: str | None = Field(default=None, description="Replaces the default instruction.")


async def run(problem: str, ctx: Context, params: Params) -> StrategyResult:
    model, executor = ctx.models[params.role], ctx.tools[params.executor]
    messages: list[Message] = solve_messages(
        problem, params.system or PROGRAM_SYSTEM, ctx.conversation
    )
    executed: ToolResult | None = None
    program = ""
    for attempt in range(params.repair_rounds + 1):
        request = ModelRequest(
            messages=messages,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            seed=ctx.rng.randrange(2**31),
        )
        try:
            generation = await model.generate(request)
        except BudgetExhausted as exc:
            ctx.trace("budget_exhausted", what=exc.what, attempt=attempt)
            break
        reply = generation.choices[0].text
        program = program_of(reply)
        ctx.trace("program", attempt=attempt, lines=len(program.splitlines()))
        try:
            executed = await executor.call({"code": program})
        except BudgetExhausted as exc:
            ctx.trace("budget_exhausted", what=exc.what, attempt=attempt)
            break
        answer = answer_of(executed.output) if executed.ok else None
        ctx.trace(
            "execution",
            attempt=attempt,
            ok=executed.ok,
            answer=answer,
            **({"error": executed.error[-300:]} if executed.error else {}),
        )
        if answer is not None:
            ctx.trace("answer", answer=answer, attempts=attempt + 1)
            return StrategyResult(
                answer=answer,
                text=f"```python\n{program}\n```\n\nOutput:\n{executed.output}",
                details={"attempts": attempt + 1, "program": program},
            )
        feedback = REPAIR.format(error=executed.error) if executed.error else EMPTY
        messages = [
            *messages,
            {"role": "assistant", "content": reply},
            {"role": "user", "content": feedback},
        ]
    ctx.trace("answer", answer=None, attempts=params.repair_rounds + 1)
    return StrategyResult(
        answer=None,
        text=f"```python\n{program}\n```" if program else "",
        budget_exhausted=ctx.budget.exhausted(),
        details={"program": program, "error": executed.error if executed else None},
    )
