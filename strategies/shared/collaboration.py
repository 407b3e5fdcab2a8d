"""Two models writing one solution, a step at a time, on a shared prefix.

``spec_reason`` and ``glimp_router`` grow a single chain of reasoning in which every
step may come from a different role. What they share lives here:

- ``Chain``: the solution so far, the exact assistant text the next writer continues,
  and who wrote each step.
- ``StepConfig`` / ``step_request``: one step is one short call that continues the
  assistant message holding the chain so far (``continue_final_message``) and stops at
  the step delimiter (a blank line by default). A server with prefix caching (vLLM,
  llama.cpp) then pays only for the tokens it has not seen yet, which is what makes
  handing a chain back and forth between two models affordable.
- ``write_step``: issue that call on a role and return the ``Step``.
- ``Chain.extend``: finished detection. A chain ends when a step states a final answer
  ("The answer is 5.", ``\\boxed{5}``, ``#### 5``), when a writer ends at once (an
  empty step: end of sequence), or at ``max_steps``.
- ``final_step``: optionally only one role may state the final answer (``answer_role``):
  a final step written by another role is written again by that role, from the same
  prefix (GlimpRouter's "the large model writes the conclusion").

Greedy steps (temperature 0) are sent without a seed: llama.cpp evaluates every seeded
prompt afresh (``cache_prompt: false``, see docs/embedded.md), which would throw away the
shared-prefix cache this whole family relies on; greedy decoding needs no seed to be
reproducible, and the journal makes replays exact either way.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Literal

from strategies.protocol import Choice, Context, Message, ModelRequest, StrategyResult
from strategies.shared.answers import extract_answer
from strategies.shared.prompts import solve_messages
from strategies.shared.scoring import STEP_DELIMITER
from strategies.shared.stepwise import states_final_answer

__all__ = [
    "STEP_DELIMITER",
    "STEP_SYSTEM",
    "Chain",
    "End",
    "Step",
    "StepConfig",
    "chain_result",
    "draw_seed",
    "final_step",
    "run_step",
    "step_messages",
    "step_request",
    "write_step",
]

STEP_SYSTEM = (
    "You are a careful problem solver. Reason step by step, briefly, with a blank line "
    "between steps. Finish with a line of the form 'The answer is N.'"
)
"""Asks for blank-line separated steps, so the default delimiter finds real steps."""

End = Literal["answer", "eos", "max_steps"]


@dataclass(frozen=True)
class StepConfig:
    """How every step of a chain is generated (shared by all writers)."""

    delimiter: str = STEP_DELIMITER
    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float | None = None
    system: str | None = None
    max_steps: int = 16
    answer_role: str | None = None
    role_systems: tuple[tuple[str, str], ...] = ()
    """System prompts for particular roles, e.g. a judge's standing instructions, kept in
    the system prompt so that they are part of the prefix its server has cached."""

    def system_for(self, role: str) -> str:
        return dict(self.role_systems).get(role) or self.system or STEP_SYSTEM


@dataclass(frozen=True)
class Step:
    """One written step: its text as generated (without the delimiter that ended it),
    who wrote it, the completion tokens it cost and why its last call ended."""

    text: str
    role: str
    tokens: int
    finish_reason: str | None


@dataclass(frozen=True)
class Chain:
    """A solution so far. ``sep`` is what must follow ``text`` before the next step: the
    delimiter that ended the last step (the server consumed it), or nothing after a
    step cut by ``max_tokens``, which the next writer resumes mid-step."""

    text: str = ""
    sep: str = ""
    authors: tuple[str, ...] = ()
    end: End | None = None

    @property
    def prefill(self) -> str:
        """The assistant text the next writer continues."""
        return self.text + self.sep

    @property
    def steps(self) -> int:
        return len(self.authors)

    @property
    def finished(self) -> bool:
        return self.end is not None

    @property
    def answer(self) -> str | None:
        return extract_answer(self.text) if self.text else None

    def steps_by(self) -> dict[str, int]:
        return dict(Counter(self.authors))

    def extend(self, step: Step, config: StepConfig) -> Chain:
        """This chain continued by ``step`` (finished if the step ends it)."""
        cut = step.finish_reason == "length"
        if not step.text.strip() and not cut:
            # The writer stopped straight away: it holds the solution complete.
            return replace(self, end="eos")
        text = self.prefill + step.text
        if not cut:
            text = text.rstrip()
        authors = (*self.authors, step.role)
        end: End | None = None
        if states_final_answer(step.text):
            end = "answer"
        elif len(authors) >= config.max_steps:
            end = "max_steps"
        sep = "" if cut else config.delimiter
        return Chain(text=text, sep=sep, authors=authors, end=end)


def step_messages(problem: str, prefill: str, system: str) -> list[Message]:
    """The chat a step continues: the problem, then the chain so far as the assistant's
    own unfinished message (absent for the first step)."""
    messages = solve_messages(problem, system)
    if prefill:
        messages.append({"role": "assistant", "content": prefill})
    return messages


def step_request(
    problem: str,
    prefill: str,
    config: StepConfig,
    *,
    role: str,
    seed: int | None,
    max_tokens: int | None = None,
    top_logprobs: int | None = None,
) -> ModelRequest:
    """One step for ``role`` continuing ``prefill``; ``top_logprobs`` asks for token
    logprobs too."""
    return ModelRequest(
        messages=step_messages(problem, prefill, config.system_for(role)),
        max_tokens=config.max_tokens if max_tokens is None else max_tokens,
        stop=[config.delimiter],
        temperature=config.temperature,
        top_p=config.top_p,
        seed=seed,
        logprobs=top_logprobs is not None,
        top_logprobs=top_logprobs,
        continue_final_message=bool(prefill),
    )


def draw_seed(ctx: Context, config: StepConfig) -> int | None:
    """A seed for a sampled step; none for greedy steps (see the module docstring)."""
    return ctx.rng.randrange(2**31) if config.temperature > 0 else None


async def run_step(ctx: Context, role: str, request: ModelRequest) -> tuple[Step, Choice]:
    """Send a step request to ``role``. Raises ``BudgetExhausted``."""
    generation = await ctx.models[role].generate(request)
    choice = generation.choices[0]
    step = Step(choice.text, role, generation.usage.completion_tokens, choice.finish_reason)
    return step, choice


async def write_step(
    ctx: Context,
    role: str,
    problem: str,
    prefill: str,
    config: StepConfig,
    *,
    max_tokens: int | None = None,
    top_logprobs: int | None = None,
) -> tuple[Step, Choice]:
    """``role`` writes the next step after ``prefill``. Raises ``BudgetExhausted``."""
    request = step_request(
        problem,
        prefill,
        config,
        role=role,
        seed=draw_seed(ctx, config),
        max_tokens=max_tokens,
        top_logprobs=top_logprobs,
    )
    return await run_step(ctx, role, request)


async def final_step(
    ctx: Context, problem: str, chain: Chain, step: Step, config: StepConfig, index: int
) -> Step:
    """``step``, or — if it states the final answer and ``config.answer_role`` is another
    role — the step that role writes instead from the same prefix. If that role's step
    states no answer, it simply becomes the next step and the chain goes on."""
    role = config.answer_role
    if role is None or step.role == role or not states_final_answer(step.text):
        return step
    written, _ = await write_step(ctx, role, problem, chain.prefill, config)
    ctx.trace(
        "final_answer",
        step=index,
        by=role,
        replaces=step.role,
        answer=extract_answer(written.text),
        proposed=extract_answer(step.text),
    )
    return written


def chain_result(
    ctx: Context, chain: Chain, *, exhausted: bool, **details: object
) -> StrategyResult:
    """Trace the ``final`` event and build the result from the chain."""
    end = chain.end or ("budget_exhausted" if exhausted else None)
    ctx.trace(
        "final",
        answer=chain.answer,
        steps=chain.steps,
        steps_by=chain.steps_by(),
        end=end,
    )
    return StrategyResult(
        answer=chain.answer,
        text=chain.text,
        budget_exhausted=exhausted,
        details={"steps": chain.steps, "steps_by": chain.steps_by(), "end": end, **details},
    )
