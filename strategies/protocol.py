"""The narrow contract between strategies and whatever runs them.

Strategies are pure algorithms: they import nothing from ``core``, ``workers`` or
``app``. Everything they may touch is described here — the request they send to a
model role, the generation they get back, the context that hands them models,
budget, tracing and randomness, and the few exceptions they are expected to handle.
``core`` implements these protocols; the test simulator and the embedded models sit
behind them without a strategy knowing.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

Message = dict[str, Any]
"""An OpenAI chat message: ``{"role": "user", "content": "..."}``; an assistant message
may carry ``tool_calls`` and a ``tool`` message answers one by ``tool_call_id``."""


AnswerKind = Literal["number", "json", "tool_calls", "text"]
"""What a strategy votes on, scores and selects (``strategies.shared.answer_kinds``)."""
ANSWER_KINDS: tuple[AnswerKind, ...] = ("number", "json", "tool_calls", "text")


class Conversation(BaseModel):
    """A job's input: the caller's messages, the functions the model may call, the shape
    of the answer, and the answer's kind. A bare question is the one-message case.

    Strategies extend it: their own instructions join the caller's system prompt rather
    than replace it (``strategies.shared.prompts.solve_messages``). Core validates it
    before a job is written (``core.conversations``), so strategies may trust it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    messages: list[Message] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    answer_kind: AnswerKind = "number"
    stream: bool = False
    """The caller reads the answer as it is generated: a strategy with one visible
    sample (``direct``) streams that call and shows its text with ``ctx.show``."""

    @classmethod
    def of_question(cls, question: str, answer_kind: AnswerKind = "number") -> Conversation:
        return cls(messages=[{"role": "user", "content": question}], answer_kind=answer_kind)

    @property
    def plain(self) -> bool:
        """One user message and nothing else: what every strategy was written for."""
        return (
            len(self.messages) == 1
            and self.messages[0].get("role") == "user"
            and not self.tools
            and self.response_format is None
            and not self.stream
        )

    @property
    def answer_schema(self) -> dict[str, Any] | None:
        """The JSON schema the answer must satisfy (``response_format: json_schema``)."""
        if not self.response_format or self.response_format.get("type") != "json_schema":
            return None
        schema = (self.response_format.get("json_schema") or {}).get("schema")
        return schema if isinstance(schema, dict) else None

    def request_fields(self) -> dict[str, Any]:
        """The ``ModelRequest`` fields that carry tools and the answer's format."""
        return {
            "tools": self.tools,
            "tool_choice": self.tool_choice if self.tools else None,
            "response_format": self.response_format,
        }

    def problem(self) -> str:
        """The conversation as one text, for prompts that quote the problem (a judge's,
        a verifier's): the question itself, or the turns as a transcript."""
        if len(self.messages) == 1:
            return message_text(self.messages[0])
        lines = []
        for message in self.messages:
            role = str(message.get("role", "user"))
            text = message_text(message)
            calls = message.get("tool_calls") or []
            if calls:
                names = ", ".join(
                    f"{c.get('function', {}).get('name')}({c.get('function', {}).get('arguments')})"
                    for c in calls
                )
                text = f"{text}\n[calls {names}]".strip()
            lines.append(f"{role.capitalize()}: {text}")
        return "\n\n".join(lines)


def message_text(message: Message) -> str:
    """A message's text: its string content, or its text parts joined."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text")) for p in content if isinstance(p, dict) and p.get("text")
        )
    return ""


ROLE_MARKER = "x-ponder-role"
"""JSON-schema key marking a params field whose value names a model role."""


def role_field(*, default: str | None, description: str, **kwargs: Any) -> Any:
    """Declare a params field that names a model role (``"small"``, ``"large"``, ...).

    The runner binds every field declared this way — whatever its name — to a pool
    before the job starts, and the field's JSON schema carries ``x-ponder-role: true``
    so that clients can tell roles from other strings.

    Example:
        >>> class Params(BaseModel):
        ...     drafter: str = role_field(default="small", description="Writes drafts.")
    """
    return Field(
        default=default, description=description, json_schema_extra={ROLE_MARKER: True}, **kwargs
    )


TOOL_MARKER = "x-ponder-tool"
"""JSON-schema key marking a params field whose value names configured tools."""


def tool_field(*, default: Any, description: str, **kwargs: Any) -> Any:
    """Declare a params field naming one configured tool (``"python"``) or a list of them.

    As with roles, the runner checks before the job starts that every tool named this
    way is configured (a 422 naming the field otherwise) and hands the job only those:
    ``ctx.tools`` holds exactly the tools its spec names.

    Example:
        >>> class Params(BaseModel):
        ...     executor: str = tool_field(default="python", description="Runs programs.")
    """
    return Field(
        default=default, description=description, json_schema_extra={TOOL_MARKER: True}, **kwargs
    )


class ModelRequest(BaseModel):
    """One logical model call, independent of which server answers it.

    Exactly one of ``messages`` (chat) or ``prompt`` (raw completion) is set. The
    canonical JSON of this object (with the role) is what the journal hashes, so
    two calls with equal fields are the same call.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    messages: list[Message] | None = None
    prompt: str | None = None
    n: int = Field(default=1, ge=1, le=256)
    max_tokens: int = Field(default=256, ge=1)
    stop: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=5.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    # Continue the last assistant message instead of opening a new turn: the
    # prefilled text is kept and generation resumes after it (vLLM's
    # ``continue_final_message``; emulated with a raw prompt elsewhere).
    continue_final_message: bool = False
    # Chat only, passed through as OpenAI defines them: the functions the model may
    # call, whether it must, and the shape of its answer (json_object / json_schema).
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None

    def prompt_chars(self) -> int:
        if self.prompt is not None:
            return len(self.prompt)
        return sum(len(str(m.get("content") or "")) for m in self.messages or [])


class TokenLogprob(BaseModel):
    """One sampled token with its log-probability and the top alternatives."""

    token: str
    logprob: float
    top: list[tuple[str, float]] = Field(default_factory=list)


class ToolCall(BaseModel):
    """A function call a model made: its name and its arguments as the JSON text the
    model wrote (which may not parse: a vote or a caller checks)."""

    model_config = ConfigDict(frozen=True)

    id: str | None = None
    name: str
    arguments: str = "{}"


class Choice(BaseModel):
    index: int
    text: str
    finish_reason: str | None = None
    tokens: list[TokenLogprob] | None = None
    tool_calls: list[ToolCall] | None = None
    """The calls this choice makes, when the request offered ``tools``."""
    reasoning: str | None = None
    """The model's reasoning apart from its answer, when the server separates it
    (``reasoning_content``: vLLM's reasoning parser, llama.cpp); ``text`` is the answer."""


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    """Every generated token, reasoning included (as OpenAI counts them)."""
    reasoning_tokens: int = 0
    """The part of ``completion_tokens`` spent reasoning: a subset, never added to it."""
    reasoning_tokens_estimated: bool = False
    """The server sent reasoning text but no count: ``reasoning_tokens`` is estimated."""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Generation(BaseModel):
    """What a strategy gets back from ``ctx.models[role].generate``."""

    role: str
    model: str
    choices: list[Choice]
    usage: Usage
    call_key: str
    replayed: bool = False
    """True when the journal answered and no model server was asked."""
    latency_ms: float | None = None
    """Wall time of the call as it was made (from the journal when replayed)."""

    @property
    def texts(self) -> list[str]:
        return [c.text for c in self.choices]


CANCELLED = "cancelled"
"""``finish_reason`` of a streamed call its consumer stopped before the model did."""


class TokenStream(Protocol):
    """A streamed call in progress (``n`` must be 1).

    Iterate for text deltas. Leaving the ``async with`` early — a ``break``, an
    exception, or the task being cancelled — stops the call at the server; the partial
    text is journaled with ``finish_reason == CANCELLED`` and its tokens are charged.
    After the block, ``result`` holds the ``Generation`` (complete or partial). Replayed
    from the journal, the recorded deltas come back in the same pieces, so a consumer
    that decides on the text so far decides the same way.
    """

    text: str
    """Everything received so far."""
    result: Generation | None

    def __aiter__(self) -> AsyncIterator[str]: ...


class ModelRole(Protocol):
    """A named pool of model servers (``small``, ``large``, ``verifier``...)."""

    name: str

    async def generate(self, request: ModelRequest) -> Generation: ...

    def stream(self, request: ModelRequest) -> AbstractAsyncContextManager[TokenStream]:
        """Generate with streaming; see ``TokenStream``."""
        ...


class ToolResult(BaseModel):
    """What a tool call returned, as the strategy reads it (and the journal keeps it)."""

    output: str = ""
    """What the tool said: a program's stdout, a server's text content."""
    error: str | None = None
    """Why the call failed (a traceback, a limit, the server's error), or None."""
    details: dict[str, Any] = Field(default_factory=dict)
    """Tool-specific facts: exit code, limits hit, truncation, duration."""
    replayed: bool = False
    """True when the journal answered and nothing was executed."""

    @property
    def ok(self) -> bool:
        return self.error is None


class Tool(Protocol):
    """A configured tool as a strategy sees it: ``ctx.tools[name]``.

    Every call is journaled like a model call, keyed by the tool, its canonical
    arguments and the occurrence, and recorded before the strategy sees the result:
    a resumed job executes no journaled call again, a strict replay executes nothing.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    """The JSON schema of the arguments (what a model is shown as a function)."""

    async def call(self, arguments: dict[str, Any]) -> ToolResult: ...

    def as_function(self) -> dict[str, Any]:
        """This tool as an OpenAI ``tools`` entry, to offer it to a model."""
        ...


class Budget(Protocol):
    """What a strategy may read of the job budget (the context enforces it)."""

    def remaining_tokens(self) -> int | None: ...

    def exhausted(self) -> bool: ...


class StrategyResult(BaseModel):
    """The outcome of one strategy run."""

    answer: str | None
    text: str = ""
    """The full text the answer came from (for a single sample), or a summary."""
    votes: dict[str, int] = Field(default_factory=dict)
    budget_exhausted: bool = False
    details: dict[str, Any] = Field(default_factory=dict)
    tool_calls: list[ToolCall] | None = None
    """The calls the answer makes (answer kind ``tool_calls``); ``answer`` is then their
    canonical form and ``text`` the content that came with them."""


class Context(Protocol):
    """Everything a strategy may use. Implemented by ``core.context``."""

    # Read-only properties rather than attributes, so an implementation may expose
    # narrower types (protocol attributes would be invariant).
    @property
    def models(self) -> Mapping[str, ModelRole]: ...

    @property
    def budget(self) -> Budget: ...

    @property
    def rng(self) -> random.Random: ...

    @property
    def conversation(self) -> Conversation:
        """The job's input; ``problem`` is ``conversation.problem()``."""
        ...

    @property
    def tools(self) -> Mapping[str, Tool]:
        """The operator's configured tools this job may use, by name."""
        ...

    def show(self, text: str) -> None:
        """Show the next piece of the answer to a caller that streams it
        (``conversation.stream``); only the answer's own text, never a draft."""
        ...

    def trace(self, name: str, **attributes: Any) -> None:
        """Record a decision (a vote, a score, a stop) as an event in the trace."""
        ...

    def span(self, name: str, **attributes: Any) -> Any:
        """An async context manager opening a child span for a group of calls."""
        ...

    async def run(self, spec: BaseModel, problem: str) -> StrategyResult:
        """Run a child strategy spec in a child span (composition by wrapping)."""
        ...


StrategyRun = Callable[[str, Context, Any], Awaitable[StrategyResult]]


class BudgetExhausted(Exception):
    """The job budget cannot pay for the next call.

    Strategies catch it to return their best answer so far (anytime behaviour);
    uncaught, the runner ends the job with no answer, marked budget_exhausted.
    """

    def __init__(
        self,
        what: Literal["tokens", "calls", "seconds", "cost", "tool_calls", "tool_seconds"],
        detail: str = "",
    ):
        super().__init__(f"budget exhausted: {what}{': ' + detail if detail else ''}")
        self.what = what
