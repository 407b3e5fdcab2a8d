"""A job's input checked before it is written: a question, or a conversation with tools
and an answer format, as OpenAI's chat completions define them.

``build_conversation`` is the one gate. It refuses what a strategy could not use (an
image part, a tool result answering no call, a tool choice naming no offered function,
an invalid JSON schema) with ``InvalidInput`` naming the field, e.g.
``messages[2].tool_call_id``, and picks the answer's kind from the request when the
caller does not: offered tools -> ``tool_calls``, a JSON response format -> ``json``,
otherwise ``number``. The strategy must support the kind (``check_answer_kind``).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.errors import InvalidInput
from strategies.protocol import ANSWER_KINDS, AnswerKind, Conversation, message_text
from strategies.registry import STRATEGIES

MAX_MESSAGES = 256
MAX_CONVERSATION_CHARS = 400_000
MAX_TOOLS = 128
_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Open(BaseModel):
    # OpenAI adds optional fields over time (``name``, ``refusal``, ``annotations``):
    # ignored rather than refused, so a newer client still works.
    model_config = ConfigDict(extra="ignore")


class _Part(_Open):
    type: str
    text: str | None = None

    @field_validator("type")
    @classmethod
    def _text_only(cls, value: str) -> str:
        if value != "text":
            raise ValueError(f"only text parts are supported, not {value!r}")
        return value


class _Function(_Open):
    name: str
    arguments: str = "{}"


class _CallIn(_Open):
    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: _Function


class _Message(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_Part] | None = None
    tool_calls: list[_CallIn] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class _FunctionSpec(_Open):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _FUNCTION_NAME.match(value):
            raise ValueError("must be 1-64 letters, digits, '_' or '-'")
        return value

    @field_validator("parameters")
    @classmethod
    def _schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            _check_schema(value)
        return value


class _Tool(_Closed):
    type: Literal["function"]
    function: _FunctionSpec


class _JsonSchema(_Open):
    name: str = Field(min_length=1, max_length=64)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None

    @field_validator("schema_")
    @classmethod
    def _schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            _check_schema(value)
        return value


class _ResponseFormat(_Closed):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: _JsonSchema | None = None


def _check_schema(schema: dict[str, Any]) -> None:
    import jsonschema  # only when a request carries a schema: ~20 ms off every start-up

    cls = jsonschema.validators.validator_for(schema, jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"not a valid JSON schema: {exc.message}") from None


def _where(prefix: str, loc: tuple[int | str, ...]) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "schema_":
            out += ".schema"
        else:
            out += f".{part}"
    return out


def _type_tag(part: int | str) -> bool:
    return isinstance(part, str) and (part == "str" or "[" in part or "(" in part)


def _parse(model: type[BaseModel], value: Any, field: str) -> Any:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        # The deepest error says most (a union's first member fails shallowly: "not a
        # string"); its location drops the union's type tags (``str``, ``list[_Part]``).
        first = max(exc.errors(), key=lambda e: len(e["loc"]))
        loc = tuple(p for p in first["loc"] if not _type_tag(p))
        where = _where(field, loc)
        raise InvalidInput(f"{where}: {first['msg']}", field=where) from None


def _messages(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise InvalidInput("messages must be a non-empty list", field="messages")
    if len(raw) > MAX_MESSAGES:
        raise InvalidInput(
            f"messages has {len(raw)} entries; the limit is {MAX_MESSAGES}", field="messages"
        )
    out: list[dict[str, Any]] = []
    offered: set[str] = set()
    for i, item in enumerate(raw):
        message: _Message = _parse(_Message, item, f"messages[{i}]")
        where = f"messages[{i}]"
        # Content parts become one string: the journal key and every prompt see one form.
        content = (
            message_text({"content": [p.model_dump() for p in message.content]})
            if (isinstance(message.content, list))
            else message.content
        )
        entry: dict[str, Any] = {"role": message.role, "content": content}
        if message.tool_calls:
            if message.role != "assistant":
                raise InvalidInput(
                    f"{where}.tool_calls: only an assistant message makes tool calls",
                    field=f"{where}.tool_calls",
                )
            entry["tool_calls"] = [c.model_dump() for c in message.tool_calls]
            offered.update(c.id for c in message.tool_calls)
        elif message.role == "assistant" and not content:
            raise InvalidInput(
                f"{where}: an assistant message needs content or tool_calls", field=where
            )
        if message.role == "tool":
            if message.tool_call_id not in offered:
                raise InvalidInput(
                    f"{where}.tool_call_id: answers no earlier assistant tool call",
                    field=f"{where}.tool_call_id",
                )
            entry["tool_call_id"] = message.tool_call_id
        elif message.role in ("system", "developer", "user") and not content:
            raise InvalidInput(f"{where}.content: must be non-empty text", field=f"{where}.content")
        if message.name:
            entry["name"] = message.name
        out.append(entry)
    if not any(m["role"] == "user" for m in out):
        raise InvalidInput("messages must contain a user message", field="messages")
    if out[-1]["role"] not in ("user", "tool"):
        raise InvalidInput(
            "messages must end with a user or tool message: that is what gets answered",
            field=f"messages[{len(out) - 1}].role",
        )
    size = sum(len(message_text(m)) for m in out)
    if size > MAX_CONVERSATION_CHARS:
        raise InvalidInput(
            f"messages hold {size} characters; the limit is {MAX_CONVERSATION_CHARS}",
            field="messages",
        )
    return out


def _tools(raw: Any) -> list[dict[str, Any]] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw or len(raw) > MAX_TOOLS:
        raise InvalidInput(f"tools must be a list of 1-{MAX_TOOLS} functions", field="tools")
    tools = [
        _parse(_Tool, item, f"tools[{i}]").model_dump(exclude_none=True)
        for i, item in enumerate(raw)
    ]
    names = [t["function"]["name"] for t in tools]
    if len(set(names)) != len(names):
        raise InvalidInput("tools: function names must be unique", field="tools")
    return tools


def _tool_choice(raw: Any, tools: list[dict[str, Any]] | None) -> str | dict[str, Any] | None:
    if raw is None:
        return None
    if raw in ("none", "auto", "required"):
        if raw != "none" and not tools:
            raise InvalidInput(f"tool_choice {raw!r} needs tools", field="tool_choice")
        return str(raw)
    name = raw.get("function", {}).get("name") if isinstance(raw, dict) else None
    if not isinstance(raw, dict) or raw.get("type") != "function" or not isinstance(name, str):
        raise InvalidInput(
            'tool_choice must be "none", "auto", "required" or '
            '{"type": "function", "function": {"name": ...}}',
            field="tool_choice",
        )
    offered = [t["function"]["name"] for t in tools or []]
    if name not in offered:
        raise InvalidInput(
            f"tool_choice names {name!r}, which tools do not offer",
            field="tool_choice.function.name",
            valid=offered,
        )
    return {"type": "function", "function": {"name": name}}


def _response_format(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    parsed: _ResponseFormat = _parse(_ResponseFormat, raw, "response_format")
    if parsed.type == "json_schema" and parsed.json_schema is None:
        raise InvalidInput(
            "response_format.json_schema is required for type json_schema",
            field="response_format.json_schema",
        )
    return parsed.model_dump(exclude_none=True, by_alias=True)


def _kind(
    requested: Any,
    tools: list[dict[str, Any]] | None,
    tool_choice: str | dict[str, Any] | None,
    response_format: dict[str, Any] | None,
) -> AnswerKind:
    json_format = (response_format or {}).get("type") in ("json_object", "json_schema")
    calls = bool(tools) and tool_choice != "none"
    if requested is None:
        return "tool_calls" if calls else "json" if json_format else "number"
    if requested not in ANSWER_KINDS:
        raise InvalidInput(
            f"answer_kind must be one of {', '.join(ANSWER_KINDS)}, not {requested!r}",
            field="answer_kind",
            valid=list(ANSWER_KINDS),
        )
    if requested == "tool_calls" and not calls:
        raise InvalidInput("answer_kind tool_calls needs tools", field="answer_kind")
    if requested == "json" and not json_format:
        raise InvalidInput(
            "answer_kind json needs response_format json_object or json_schema",
            field="answer_kind",
        )
    kind: AnswerKind = requested
    return kind


def build_conversation(
    *,
    question: str | None,
    messages: Any = None,
    tools: Any = None,
    tool_choice: Any = None,
    response_format: Any = None,
    answer_kind: Any = None,
    stream: bool = False,
) -> Conversation | None:
    """The validated conversation, or None for a bare question asking for a number (the
    case every job was before conversations, stored as just its question).

    Exactly one of ``question`` and ``messages`` is given (``question`` is already
    validated by the caller).
    """
    if (question is None) == (messages is None):
        raise InvalidInput("give either question or messages, not both", field="messages")
    turns = _messages(messages) if messages is not None else [{"role": "user", "content": question}]
    offered = _tools(tools)
    choice = _tool_choice(tool_choice, offered)
    fmt = _response_format(response_format)
    kind = _kind(answer_kind, offered, choice, fmt)
    conversation = Conversation(
        messages=turns,
        tools=offered,
        tool_choice=choice,
        response_format=fmt,
        answer_kind=kind,
        stream=stream,
    )
    if messages is None and conversation.plain and kind == "number" and choice is None:
        return None
    return conversation


def check_answer_kind(kind: str, answer_kind: AnswerKind) -> None:
    """Refuse a strategy that cannot vote on, score or select this kind of answer."""
    supported = STRATEGIES[kind].answer_kinds
    if answer_kind not in supported:
        able = sorted(k for k, s in STRATEGIES.items() if answer_kind in s.answer_kinds)
        raise InvalidInput(
            f"strategy {kind!r} does not support answer kind {answer_kind!r} "
            f"(it supports {', '.join(supported)}); strategies that do: {', '.join(able)}",
            field="answer_kind",
            valid=able,
        )
