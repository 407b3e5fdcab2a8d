"""Think-then-answer: the prompts and the prefill/continuation calls budgeted-thinking
strategies share (``elastic``, ``budget_forcing``; reusable by any strategy that wants
a thinking phase and an answer phase with budgets of their own).

The assistant message has this shape, built in two (or more) calls::

    <think>
    ...reasoning...            <- thinking calls: continue "<think>\\n" + thinking so far,
    </think>                      stop at "</think>", max_tokens = the thinking allowance
                               <- answer call: continue "<think>\\n{thinking}\\n</think>\\n\\n",
    The answer is 5.              max_tokens = the answer budget

Every call continues a prefilled assistant message (``continue_final_message``), so the
client decides where thinking ends: when a thinking call stops at its token limit, the
client appends ``</think>`` itself (the forced end of Elastic Reasoning and s1), which
works on any server, including ones that know nothing about reasoning.

Two prompt formats:
- ``instruct`` — plain instruct models (the embedded Qwen2.5-Coder): a system prompt asks
  for the reasoning inside ``<think>...</think>`` and a final line ``The answer is N.``.
- ``reasoning`` — models trained to think in ``<think>`` (DeepSeek-R1 distills, QwQ,
  Qwen3): no system prompt, and the question ends with the instruction those models were
  tuned on (``\\boxed{}``). Check the model's chat template first: a template that
  strips the reasoning out of assistant messages (DeepSeek-R1's keeps only the text after
  ``</think>``) also strips it from the continued message of the answer call.

Servers do not always honour the controls of a call. ``check_controls`` compares what
came back with what was asked and returns the text as it should have been, with one
``IgnoredControl`` per control the server did not honour; strategies trace each one as
``control_ignored`` so a bad pool shows up in the trace rather than as a silent overrun.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from strategies.protocol import (
    BudgetExhausted,
    Choice,
    Context,
    Message,
    ModelRequest,
    ModelRole,
    StrategyResult,
    Usage,
)
from strategies.shared.answers import extract_answer

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

ThinkFormat = Literal["instruct", "reasoning"]

INSTRUCT_SYSTEM = (
    "You are a careful problem solver. First think step by step between <think> and "
    "</think>. After </think>, finish with a line of the form 'The answer is N.'"
)
REASONING_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def think_messages(problem: str, fmt: ThinkFormat, system: str | None = None) -> list[Message]:
    """The conversation before the assistant's turn (system prompt and question)."""
    if fmt == "reasoning":
        # R1-style models are tuned without a system prompt and with the instruction in
        # the user turn; a system prompt is sent only when the caller gives one.
        head: list[Message] = [{"role": "system", "content": system}] if system else []
        return [*head, {"role": "user", "content": f"{problem}\n{REASONING_INSTRUCTION}"}]
    return [
        {"role": "system", "content": system or INSTRUCT_SYSTEM},
        {"role": "user", "content": problem},
    ]


def thinking_prefill(thinking: str = "") -> str:
    """The assistant text a thinking call continues: ``<think>\\n`` + the thinking so far."""
    return f"{THINK_OPEN}\n{thinking}"


def answer_prefill(thinking: str) -> str:
    """The assistant text the answer call continues: the thinking, closed by the client.

    Trailing whitespace of the thinking is dropped so that a thinking that ended with a
    newline does not leave a blank line before ``</think>``.
    """
    return f"{THINK_OPEN}\n{thinking.rstrip()}\n{THINK_CLOSE}\n\n"


def append_cue(thinking: str, cue: str) -> str:
    """The thinking with a continuation cue appended (budget forcing's "Wait"), on a new
    line unless the thinking already ends with whitespace (or is empty)."""
    if not thinking or thinking[-1].isspace():
        return thinking + cue
    return f"{thinking}\n{cue}"


def continued(messages: list[Message], assistant_text: str) -> list[Message]:
    """``messages`` followed by a prefilled assistant message to continue."""
    return [*messages, {"role": "assistant", "content": assistant_text}]


def continue_request(
    messages: list[Message],
    assistant_text: str,
    *,
    max_tokens: int,
    seed: int,
    stop: list[str] | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
) -> ModelRequest:
    """A call that continues the prefilled assistant message ``assistant_text``."""
    return ModelRequest(
        messages=continued(messages, assistant_text),
        continue_final_message=True,
        max_tokens=max_tokens,
        stop=stop,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
    )


# -- what the server did with the controls ------------------------------------------


@dataclass(frozen=True)
class IgnoredControl:
    """A control of the request the server did not honour, and what the client did."""

    control: Literal["continue_final_message", "stop", "max_tokens"]
    detail: str


@dataclass(frozen=True)
class Checked:
    """A choice's text as the request's controls asked for it."""

    text: str
    finish_reason: str | None
    """``"stop"`` when a stop string was cut client-side, ``"length"`` when the server
    reported more tokens than ``max_tokens`` allowed; otherwise the server's own."""
    ignored: list[IgnoredControl] = field(default_factory=list)


def check_controls(request: ModelRequest, choice: Choice, usage: Usage) -> Checked:
    """Compare one choice (of an ``n=1`` call) with the controls its request asked for.

    - ``continue_final_message``: the reply repeats the prefilled text (the server
      echoed it), or, in a thinking call, opens a new ``<think>`` (the server started a
      new assistant turn instead of continuing). The repeat is removed.
    - ``stop``: the text still contains a stop string — the server generated past it.
      The text is cut before it, as the server should have done; what came after is
      dropped (the ``detail`` says how much), and the thinking counts as ended.
    - ``max_tokens``: the server charged more completion tokens than asked. The text is
      kept (cutting it would need the model's tokenizer) but counts as stopped by length.
    """
    text = choice.text
    finish = choice.finish_reason
    ignored: list[IgnoredControl] = []
    last = (request.messages or [{}])[-1]
    prefill = last.get("content", "") if last.get("role") == "assistant" else ""
    if request.continue_final_message and prefill:
        if text.startswith(prefill):
            text = text[len(prefill) :]
            ignored.append(
                IgnoredControl(
                    "continue_final_message",
                    f"the reply repeated the {len(prefill)}-character prefill; removed",
                )
            )
        elif THINK_CLOSE not in prefill and text.lstrip().startswith(THINK_OPEN):
            text = text.lstrip()[len(THINK_OPEN) :].lstrip()
            ignored.append(
                IgnoredControl(
                    "continue_final_message",
                    f"the reply opened its own {THINK_OPEN}: the server started a new turn "
                    "instead of continuing the prefilled one; the tag was removed",
                )
            )
    cuts = [(at, s) for s in request.stop or [] if s and (at := text.find(s)) >= 0]
    if cuts:
        at, stop = min(cuts)
        after = len(text) - at - len(stop)
        text = text[:at]
        finish = "stop"
        ignored.append(
            IgnoredControl(
                "stop",
                f"the text contained the stop string {stop!r} with {after} characters "
                "after it; cut there",
            )
        )
    elif usage.completion_tokens > request.max_tokens * request.n:
        finish = "length"
        ignored.append(
            IgnoredControl(
                "max_tokens",
                f"{usage.completion_tokens} completion tokens reported for "
                f"max_tokens={request.max_tokens}; text kept as sent",
            )
        )
    return Checked(text, finish, ignored)


def trace_ignored(ctx: Context, phase: str, checked: Checked) -> None:
    for item in checked.ignored:
        ctx.trace("control_ignored", control=item.control, phase=phase, detail=item.detail)


# -- the two phases ---------------------------------------------------------------------


@dataclass(frozen=True)
class Thought:
    """What one thinking call added."""

    text: str
    """The continuation, after ``check_controls`` (the end marker is never in it)."""
    tokens: int
    """Completion tokens the server charged for the call."""
    finish_reason: str | None

    @property
    def hit_limit(self) -> bool:
        """The call stopped at its token limit: the thinking did not end by itself."""
        return self.finish_reason == "length"


async def think(
    ctx: Context,
    model: ModelRole,
    messages: list[Message],
    thinking: str,
    *,
    max_tokens: int,
    temperature: float | None = None,
    top_p: float | None = None,
) -> Thought:
    """Continue the thinking (``thinking`` so far) until ``</think>`` or ``max_tokens``.

    Raises ``BudgetExhausted`` like any call. Controls the server ignored are traced
    (``control_ignored``, ``phase="thinking"``).
    """
    request = continue_request(
        messages,
        thinking_prefill(thinking),
        max_tokens=max_tokens,
        stop=[THINK_CLOSE],
        temperature=temperature,
        top_p=top_p,
        seed=ctx.rng.randrange(2**31),
    )
    generation = await model.generate(request)
    checked = check_controls(request, generation.choices[0], generation.usage)
    trace_ignored(ctx, "thinking", checked)
    return Thought(checked.text, generation.usage.completion_tokens, checked.finish_reason)


def thinking_allowance(ctx: Context, wanted: int, answer_tokens: int) -> int:
    """Thinking tokens a call may ask for while the job budget keeps ``answer_tokens``
    for the answer phase: the answer budget is never eaten by thinking (0 when the job
    budget cannot pay for any thinking at all)."""
    remaining = ctx.budget.remaining_tokens()
    if remaining is None:
        return wanted
    return max(0, min(wanted, remaining - answer_tokens))


async def answer_after_thinking(
    ctx: Context,
    model: ModelRole,
    messages: list[Message],
    thinking: str,
    *,
    max_tokens: int,
    temperature: float | None = None,
    top_p: float | None = None,
) -> StrategyResult:
    """Close the thinking with ``</think>`` and generate the answer within ``max_tokens``.

    The answer is extracted from the answer text; when it has none (or the budget cannot
    pay for the call) the answer found in the thinking is used instead, traced as
    ``answer_from_thinking``. Traces ``answer`` (answer, tokens, finish_reason).
    ``result.text`` is the whole assistant message (thinking and answer).
    """
    prefill = answer_prefill(thinking)
    request = continue_request(
        messages,
        prefill,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=ctx.rng.randrange(2**31),
    )
    try:
        generation = await model.generate(request)
    except BudgetExhausted as exc:
        ctx.trace("budget_exhausted", what=exc.what, phase="answer")
        fallback = extract_answer(thinking)
        ctx.trace("answer_from_thinking", answer=fallback)
        return StrategyResult(
            answer=fallback,
            text=prefill,
            budget_exhausted=True,
            details={"answer_tokens": 0, "answer_from_thinking": True},
        )
    checked = check_controls(request, generation.choices[0], generation.usage)
    trace_ignored(ctx, "answer", checked)
    tokens = generation.usage.completion_tokens
    answer = extract_answer(checked.text)
    ctx.trace("answer", answer=answer, tokens=tokens, finish_reason=checked.finish_reason)
    from_thinking = answer is None
    if from_thinking:
        answer = extract_answer(thinking)
        ctx.trace("answer_from_thinking", answer=answer)
    return StrategyResult(
        answer=answer,
        text=prefill + checked.text,
        details={"answer_tokens": tokens, "answer_from_thinking": from_thinking},
    )
