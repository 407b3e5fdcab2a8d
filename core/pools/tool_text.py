"""Function calls a server left in the text, read back as calls.

llama.cpp's server turns a model's output into ``tool_calls`` only for chat templates it
recognises. The embedded Qwen2.5-Coder, asked with ``tools``, answers with the call as
plain content: a bare ``{"name": ..., "arguments": {...}}``, wrapped in a ```json fence
when ``tool_choice`` forces a function (both seen on 2026-12-05 with xllamacpp, jinja
on), or in Qwen's Hermes-style ``<tool_call>...</tool_call>`` tags. Parallel calls come
as a JSON list or as several objects one after another (one per line, the way small
models write them; a fence around them or around each allowed). vLLM does this
server-side with its ``hermes`` parser; Ponder does it here for any server, so
strategies and clients see the same ``tool_calls`` from every pool.

Only a text that *is* calls is read as calls: the JSON must name a function the request
offered, and apart from ``<tool_call>`` blocks (which may follow some reasoning) there
may be nothing else. Anything else stays text.
"""

from __future__ import annotations

import json
import re
from typing import Any

from strategies.protocol import Choice, ModelRequest, ToolCall
from strategies.shared.answers import parse_json_answer

_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


def offered_functions(request: ModelRequest) -> set[str]:
    """Names of the functions a request lets the model call (none when ``tool_choice``
    is "none")."""
    if not request.tools or request.tool_choice == "none":
        return set()
    names = set()
    for tool in request.tools:
        function = tool.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            names.add(function["name"])
    return names


def calls_in_text(text: str, offered: set[str]) -> tuple[list[ToolCall], str] | None:
    """The calls ``text`` consists of and the text left around them, or None when the
    text is not calls to offered functions."""
    tagged = _TAGGED.findall(text)
    if tagged:
        values = [_json(block) for block in tagged]
        rest = _TAGGED.sub("", text).strip()
    else:
        try:
            values = [parse_json_answer(text)]  # a bare or fenced JSON value
        except ValueError:
            found = _json_sequence(text)
            if found is None:
                return None
            values = found
        rest = ""
    calls: list[ToolCall] = []
    for value in values:
        for item in value if isinstance(value, list) else [value]:
            call = _call(item, offered)
            if call is None:
                return None
            calls.append(call)
    return (calls, rest) if calls else None


def with_calls_from_text(choices: list[Choice], request: ModelRequest) -> list[Choice]:
    """Give each choice that answered a tool-offering request with calls in its text
    those calls as ``tool_calls`` (ids ``call_<choice>_<k>``, finish_reason
    ``tool_calls``), its text reduced to what surrounds them."""
    offered = offered_functions(request)
    if not offered:
        return choices
    for choice in choices:
        if choice.tool_calls:
            continue
        found = calls_in_text(choice.text, offered)
        if found is None:
            continue
        calls, rest = found
        choice.tool_calls = [
            call.model_copy(update={"id": f"call_{choice.index}_{k}"})
            for k, call in enumerate(calls)
        ]
        choice.text = rest
        if choice.finish_reason in (None, "stop"):
            choice.finish_reason = "tool_calls"
    return choices


_FENCE_LINE = re.compile(r"^\s*```[a-zA-Z]*\s*$", re.M)
_SPACE = re.compile(r"\s*")
_DECODER = json.JSONDecoder()


def _json_sequence(text: str) -> list[Any] | None:
    """Several JSON values one after another and nothing else, fence lines aside; None
    when the text is anything more."""
    body = _FENCE_LINE.sub("", text)
    values: list[Any] = []
    at = _SPACE.match(body).end()  # type: ignore[union-attr]  # \s* always matches
    while at < len(body):
        try:
            value, at = _DECODER.raw_decode(body, at)
        except ValueError:
            return None
        values.append(value)
        at = _SPACE.match(body, at).end()  # type: ignore[union-attr]
    return values if len(values) > 1 else None


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _call(item: Any, offered: set[str]) -> ToolCall | None:
    if not isinstance(item, dict) or item.get("name") not in offered:
        return None
    arguments = item.get("arguments", item.get("parameters", {}))
    if isinstance(arguments, str):
        text = arguments
    elif isinstance(arguments, dict):
        text = json.dumps(arguments, ensure_ascii=False)
    else:
        return None
    return ToolCall(name=item["name"], arguments=text)
