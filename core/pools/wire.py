"""The OpenAI-compatible wire format: request bodies per server kind, responses parsed.

Pure functions, no I/O, so the dialect differences between vLLM, llama.cpp's server
and the simulator live in one place and are unit-tested without a network.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from pydantic import TypeAdapter

from core.settings import PoolSettings
from strategies.protocol import Choice, ModelRequest, Usage

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"

# vLLM reports a logprob of -inf as -9999.0; a null or -inf logprob gets the same
# floor so results stay JSON-serialisable (the journal stores them).
_NO_LOGPROB = -9999.0

# Validating plain dicts in pydantic-core is measurably faster than model_construct
# (about 2x per Choice, 2.5x per token with pydantic 2.14), and still type-checks.
_CHOICES = TypeAdapter(list[Choice])


class WireError(ValueError):
    """The server's answer is not the shape an OpenAI-compatible server returns."""


def build_body(request: ModelRequest, settings: PoolSettings) -> tuple[str, dict[str, Any]]:
    """Return the path and JSON body for ``request`` as ``settings.kind`` expects it.

    Args:
        request: the logical call; ``messages`` selects chat, ``prompt`` completions.
        settings: the pool, for its model name and server kind.

    Example:
        >>> path, body = build_body(ModelRequest(prompt="2+2="), settings)
        >>> path
        '/v1/completions'
    """
    chat = request.messages is not None
    body: dict[str, Any] = {"model": settings.model}
    if chat:
        body["messages"] = request.messages
    else:
        body["prompt"] = request.prompt
    body["n"] = request.n
    body["max_tokens"] = request.max_tokens
    if request.stop is not None:
        body["stop"] = request.stop
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.seed is not None:
        body["seed"] = request.seed
        if settings.kind == "llamacpp":
            # Measured: llama.cpp's seeded sampling is reproducible only when the
            # prompt is evaluated afresh, not resumed from the slot's cache.
            body["cache_prompt"] = False
    if request.logprobs:
        if chat:
            body["logprobs"] = True
            if request.top_logprobs is not None:
                body["top_logprobs"] = request.top_logprobs
        else:
            # The legacy API takes the number of alternatives; llama.cpp reads 0 as
            # "no logprobs at all", so ask for at least one.
            body["logprobs"] = request.top_logprobs or 1
    if chat:
        for name in ("tools", "tool_choice", "response_format"):
            value = getattr(request, name)
            if value is not None:
                body[name] = value
    if chat and request.continue_final_message and settings.kind != "llamacpp":
        # llama.cpp continues a trailing assistant message by itself (prefill);
        # vLLM and the simulator need to be told, and must not open a new turn.
        body["continue_final_message"] = True
        body["add_generation_prompt"] = False
    return (CHAT_PATH if chat else COMPLETIONS_PATH), body


def chunk_body(body: dict[str, Any], n: int, offset: int) -> dict[str, Any]:
    """A copy of ``body`` asking for ``n`` choices, its seed (if any) moved by ``offset``.

    The seed moves by the index of the chunk's first choice, so fanned-out samples
    differ from each other yet each stays reproducible, whatever the chunk size.
    """
    chunk = dict(body)
    chunk["n"] = n
    seed = body.get("seed")
    if seed is not None:
        chunk["seed"] = seed + offset
    return chunk


def parse_response(
    data: Any, *, chat: bool, first_index: int = 0
) -> tuple[str | None, list[Choice], Usage]:
    """Parse a completions or chat completions answer into protocol types.

    Choices are ordered by the server's ``index`` and renumbered from
    ``first_index``, so fanned-out chunks concatenate into one 0..n-1 list.

    Returns:
        The model name the server reported (``None`` if absent), the choices and
        the token usage (a count the server did not report is 0, never guessed).

    Raises:
        WireError: the body has no ``choices`` list or a choice is malformed.
    """
    if not isinstance(data, dict):
        raise WireError(f"expected a JSON object, got {type(data).__name__}")
    raw = data.get("choices")
    if not isinstance(raw, list):
        raise WireError("response has no 'choices' list")
    if len(raw) > 1:
        raw = sorted(raw, key=_server_index)
    try:
        items = [_choice_dict(c, chat, first_index + i) for i, c in enumerate(raw)]
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise WireError(f"malformed choice: {exc!r}") from exc
    choices = _CHOICES.validate_python(items)
    model = data.get("model")
    usage = with_reasoning_estimate(parse_usage(data.get("usage")), choices)
    return (model if isinstance(model, str) else None), choices, usage


def without_echoed_prefill(
    choices: list[Choice], request: ModelRequest, settings: PoolSettings
) -> list[Choice]:
    """llama.cpp answers a continued assistant message with the prefill *and* the
    continuation (its logprobs cover only the continuation); vLLM and OpenAI return the
    continuation alone. Strategies get the continuation alone from every server."""
    if settings.kind != "llamacpp" or not request.continue_final_message:
        return choices
    last = (request.messages or [{}])[-1]
    prefill = last.get("content", "") if last.get("role") == "assistant" else ""
    if not prefill:
        return choices
    for choice in choices:
        if choice.text.startswith(prefill):
            choice.text = choice.text[len(prefill) :]
    return choices


def error_message(content: bytes) -> str:
    """The server's own explanation from an error body (OpenAI, vLLM or llama.cpp)."""
    try:
        data = json.loads(content)
    except ValueError:
        return content[:500].decode("utf-8", "replace").strip()
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if isinstance(data.get("message"), str):
            return str(data["message"])  # vLLM's ErrorResponse
        if isinstance(data.get("detail"), str):
            return str(data["detail"])  # FastAPI's HTTPException
    return json.dumps(data)[:500]


def retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds; None if absent or an HTTP-date (not honoured)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None  # also rejects NaN


def describe(exc: BaseException) -> str:
    """A transport error as the attempt log shows it: ``ConnectError: refused``."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _server_index(choice: Any) -> int:
    index = choice.get("index") if isinstance(choice, dict) else None
    return index if isinstance(index, int) else 0


def _choice_dict(c: dict[str, Any], chat: bool, index: int) -> dict[str, Any]:
    message = (c.get("message") or {}) if chat else {}
    text = (message.get("content") if chat else c.get("text")) or ""
    logprobs = c.get("logprobs")
    calls = message.get("tool_calls")
    return {
        "index": index,
        "text": text,
        "finish_reason": c.get("finish_reason"),
        "tokens": _tokens(logprobs) if logprobs else None,
        "tool_calls": [_tool_call(call) for call in calls] if calls else None,
        "reasoning": reasoning_of(message) if chat else None,
    }


def reasoning_of(message: dict[str, Any]) -> str | None:
    """A chat message's (or stream delta's) reasoning text: ``reasoning_content`` (vLLM's
    reasoning parser before 0.10, llama.cpp, DeepSeek) or ``reasoning`` (vLLM since)."""
    for name in ("reasoning_content", "reasoning"):
        value = message.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def _tool_call(call: dict[str, Any]) -> dict[str, Any]:
    function = call["function"]
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        # Some servers send the arguments as an object rather than its JSON text.
        arguments = json.dumps(arguments if arguments is not None else {})
    return {"id": call.get("id"), "name": function["name"], "arguments": arguments}


def _tokens(logprobs: dict[str, Any]) -> list[dict[str, Any]] | None:
    content = logprobs.get("content")
    if content is not None:
        # Chat layout; llama.cpp also uses it for /v1/completions.
        return [
            {
                "token": t["token"],
                "logprob": _lp(t.get("logprob")),
                "top": _ranked(
                    (a["token"], _lp(a.get("logprob"))) for a in t.get("top_logprobs") or ()
                ),
            }
            for t in content
        ]
    tokens = logprobs.get("tokens")
    if tokens is None:
        return None
    # Legacy completions layout: parallel lists, alternatives as {token: logprob}.
    lps = logprobs.get("token_logprobs") or ()
    tops = logprobs.get("top_logprobs") or ()
    out = []
    for i, token in enumerate(tokens):
        top = tops[i] if i < len(tops) else None
        out.append(
            {
                "token": token,
                "logprob": _lp(lps[i] if i < len(lps) else None),
                "top": _ranked((k, _lp(v)) for k, v in top.items()) if top else [],
            }
        )
    return out


def _ranked(pairs: Iterable[tuple[str, float]]) -> list[tuple[str, float]]:
    """Alternatives most likely first. vLLM lists the *sampled* token first at
    temperature > 0 even when it is not the most likely (seen on vLLM 0.32), and its
    legacy layout adds it as a (k+1)-th entry; entropy-based routers need them ranked."""
    return sorted(pairs, key=lambda pair: -pair[1])


def _lp(value: Any) -> float:
    return _NO_LOGPROB if value is None else max(float(value), _NO_LOGPROB)


def parse_usage(raw: Any) -> Usage:
    """The server's ``usage``; reasoning tokens from ``completion_tokens_details``
    (OpenAI, vLLM), a count not reported is 0."""
    if not isinstance(raw, dict):
        return Usage()
    details = raw.get("completion_tokens_details")
    reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
    return Usage(
        prompt_tokens=raw.get("prompt_tokens") or 0,
        completion_tokens=raw.get("completion_tokens") or 0,
        reasoning_tokens=reasoning if isinstance(reasoning, int) and reasoning > 0 else 0,
    )


def estimate_tokens(text: str) -> int:
    """Tokens in ``text`` without the server's tokenizer: 4 characters per token (the
    usual rule for BPE vocabularies on English), at least 1 for non-empty text."""
    return (len(text) + 3) // 4 if text else 0


def with_reasoning_estimate(usage: Usage, choices: Iterable[Choice]) -> Usage:
    """``usage`` with reasoning tokens estimated from the choices' reasoning text when the
    server sent the text but no count (llama.cpp, vLLM without usage details), flagged
    ``reasoning_tokens_estimated``. The estimate stays within ``completion_tokens``:
    reasoning is a part of what was generated, never more."""
    if usage.reasoning_tokens:
        return usage
    estimate = sum(estimate_tokens(c.reasoning or "") for c in choices)
    if not estimate:
        return usage
    if usage.completion_tokens:
        estimate = min(estimate, usage.completion_tokens)
    return usage.model_copy(
        update={"reasoning_tokens": estimate, "reasoning_tokens_estimated": True}
    )
