"""The OpenAI wire format: validating request bodies and rendering responses.

Only the fields the simulator honours are validated; unknown fields are ignored, as
vLLM does, so clients may send whatever their real servers accept.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from starlette.responses import JSONResponse

from core.simulator.config import Latency, SimulatorConfig
from core.simulator.engine import (
    Sample,
    SampleParams,
    TokenLogprob,
    chat_prompt_text,
    content_text,
)

MAX_TOP_LOGPROBS = 20


class BadRequest(Exception):
    """The request body cannot be served; answered with a 400 naming ``param``."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True, slots=True)
class GenRequest:
    """A validated body of ``/v1/chat/completions`` or ``/v1/completions``."""

    kind: Literal["chat", "completion"]
    model: str
    prompts: list[str]
    """Prompt texts: one for chat; one per prompt of a completions list."""
    params: SampleParams
    stream: bool
    include_usage: bool


def _opt(body: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """An optional field of the given type. bool is an int to Python, not to JSON
    schemas: ``"n": true`` and ``"logprobs": 1`` (on chat) are rejected as vLLM does."""
    value = body.get(name)
    if value is not None and (
        isinstance(value, bool) != (kind is bool) or not isinstance(value, kind)
    ):
        raise BadRequest(f"'{name}' has the wrong type", name)
    return value


def parse_request(
    body: Any, kind: Literal["chat", "completion"], config: SimulatorConfig
) -> GenRequest:
    """Validate the fields the simulator honours; unknown fields are ignored, like vLLM."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    if ("messages" in body) == ("prompt" in body):
        raise BadRequest(
            "exactly one of 'messages' (chat) or 'prompt' (completions) is required",
            "messages" if kind == "chat" else "prompt",
        )
    model = _opt(body, "model", str) or config.models[0]
    prefill = ""
    if kind == "chat":
        messages = body.get("messages")
        if "prompt" in body or not isinstance(messages, list) or not messages:
            raise BadRequest(
                "'messages' must be a non-empty list on /v1/chat/completions", "messages"
            )
        if not all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str | list | None)
            for m in messages
        ):
            raise BadRequest(
                "every message needs a string 'role' and a string, list or null 'content'",
                "messages",
            )
        prompts = [chat_prompt_text(messages)]
        if messages[-1]["role"] == "assistant":
            prefill = content_text(messages[-1].get("content"))
    else:
        prompt: Any = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if (
            not isinstance(prompts, list)
            or not prompts
            or not all(isinstance(p, str) for p in prompts)
        ):
            raise BadRequest(
                "'prompt' must be a string or a non-empty list of strings "
                "(token-id prompts are not supported)",
                "prompt",
            )
    n = _opt(body, "n", int)
    n = 1 if n is None else n
    if n < 1:
        raise BadRequest(f"'n' must be at least 1, got {n}", "n")
    if config.max_n is not None and n > config.max_n:
        raise BadRequest(
            f"n={n} exceeds this server's limit of {config.max_n} parallel sequences per request",
            "n",
        )
    max_tokens = _opt(body, "max_completion_tokens", int)
    if max_tokens is None:
        max_tokens = _opt(body, "max_tokens", int)
    if max_tokens is not None and max_tokens < 1:
        raise BadRequest(f"'max_tokens' must be at least 1, got {max_tokens}", "max_tokens")
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise BadRequest("'stop' must be a string or a list of strings", "stop")
    temperature = _opt(body, "temperature", (int, float))
    if temperature is not None and temperature < 0:
        raise BadRequest("'temperature' must be >= 0", "temperature")
    top_p = _opt(body, "top_p", (int, float))
    if top_p is not None and not 0 < top_p <= 1:
        raise BadRequest("'top_p' must be in (0, 1]", "top_p")
    seed = _opt(body, "seed", int)
    if kind == "chat":
        wants = _opt(body, "logprobs", bool)
        top_n = _opt(body, "top_logprobs", int)
        if top_n is not None and not wants:
            raise BadRequest("'top_logprobs' needs 'logprobs': true", "top_logprobs")
        top = (top_n or 0) if wants else None
        top_name = "top_logprobs"
    else:
        top = _opt(body, "logprobs", int)
        top_name = "logprobs"
    if top is not None and not 0 <= top <= MAX_TOP_LOGPROBS:
        raise BadRequest(f"'{top_name}' must be between 0 and {MAX_TOP_LOGPROBS}", top_name)
    tools = _tools_offered(body) if kind == "chat" else False
    stream = bool(_opt(body, "stream", bool))
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", "stream_options")
    params = SampleParams(
        n=n,
        max_tokens=max_tokens or 256,
        stop=tuple(s for s in stops if s),
        seed=seed,
        top=top,
        prefill=prefill,
        tools=tools,
        chat=kind == "chat",
    )
    return GenRequest(kind, model, prompts, params, stream, bool(options.get("include_usage")))


def _tools_offered(body: dict[str, Any]) -> bool:
    """Whether a chat request lets the model call a function: ``tools`` holds at least
    one ``{"type": "function", "function": {"name": ...}}`` and ``tool_choice`` is not
    "none". A forced function (``tool_choice`` naming one) is not checked against the
    script: the script says what the model calls."""
    tools = body.get("tools")
    if tools is None:
        return False
    if not isinstance(tools, list) or not all(
        isinstance(t, dict)
        and t.get("type") == "function"
        and isinstance(t.get("function"), dict)
        and isinstance(t["function"].get("name"), str)
        for t in tools
    ):
        raise BadRequest(
            '\'tools\' must be a list of {"type": "function", "function": {"name": ...}}',
            "tools",
        )
    choice = body.get("tool_choice", "auto")
    if choice not in ("none", "auto", "required") and not (
        isinstance(choice, dict)
        and choice.get("type") == "function"
        and isinstance(choice.get("function"), dict)
    ):
        raise BadRequest(
            '\'tool_choice\' must be "none", "auto", "required" or a function',
            "tool_choice",
        )
    return bool(tools) and choice != "none"


def tool_calls_json(sample: Sample, prefix: str, c: int) -> list[dict[str, Any]]:
    """A choice's calls in the chat layout, with ids unique within the response."""
    return [
        {
            "id": f"call_{prefix}_{c}_{k}",
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
        for k, call in enumerate(sample.tool_calls)
    ]


def error_response(
    status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    kind = (
        "invalid_request_error"
        if status < 429
        else "rate_limit_error"
        if status == 429
        else "server_error"
    )
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


def _entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def chat_logprobs(logprobs: Sequence[TokenLogprob]) -> dict[str, Any]:
    """The chat layout: ``{"content": [{token, logprob, bytes, top_logprobs}, ...]}``."""
    return {
        "content": [
            {**_entry(t.token, t.logprob), "top_logprobs": [_entry(a, lp) for a, lp in t.top]}
            for t in logprobs
        ]
    }


def legacy_logprobs(logprobs: Sequence[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    """The legacy completions layout; ``text_offset`` counts from the generated text."""
    offsets = []
    for t in logprobs:
        offsets.append(offset)
        offset += len(t.token)
    return {
        "tokens": [t.token for t in logprobs],
        "token_logprobs": [t.logprob for t in logprobs],
        # Legacy top_logprobs always holds at least the sampled token (vLLM does too).
        "top_logprobs": [dict(t.top) or {t.token: t.logprob} for t in logprobs],
        "text_offset": offsets,
    }


class Job:
    """One accepted generation request: its samples, and how to render them."""

    def __init__(
        self,
        req: GenRequest,
        samples: list[Sample],
        prompt_tokens: int,
        latency: Latency,
        number: int,
        completions_layout: Literal["legacy", "chat"],
    ) -> None:
        self.req, self.samples = req, samples
        self.latency = latency
        self.prompt_tokens = prompt_tokens
        # Decode steps per choice: its text's tokens, then one step that emits its
        # function calls whole (a stream sends them in one delta).
        # Reasoning tokens come first, then the text's.
        self.counts = [
            len(s.reasoning_tokens) + len(s.tokens) + (1 if s.tool_calls else 0) for s in samples
        ]
        self.id = f"{'chatcmpl' if req.kind == 'chat' else 'cmpl'}-sim{number}"
        self.created = int(time.time())
        self.chat_layout = req.kind == "chat" or completions_layout == "chat"

    def usage(self) -> dict[str, Any]:
        done = sum(s.completion_tokens for s in self.samples)
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": done,
            "total_tokens": self.prompt_tokens + done,
        }
        reported = [s for s in self.samples if s.reasoning_tokens and s.reasoning_reported]
        if reported:
            thought = sum(len(s.reasoning_tokens) for s in reported)
            usage["completion_tokens_details"] = {"reasoning_tokens": thought}
        return usage

    def logprobs(self, lps: list[TokenLogprob] | None, offset: int = 0) -> Any:
        if lps is None:
            return None
        return chat_logprobs(lps) if self.chat_layout else legacy_logprobs(lps, offset)

    def body(self) -> dict[str, Any]:
        choices: list[dict[str, Any]] = []
        for i, s in enumerate(self.samples):
            choice: dict[str, Any] = {"index": i}
            if self.req.kind == "chat":
                choice["message"] = {"role": "assistant", "content": s.text}
                if s.reasoning:
                    choice["message"]["reasoning_content"] = s.reasoning
                if s.tool_calls:
                    choice["message"]["content"] = s.text or None
                    choice["message"]["tool_calls"] = tool_calls_json(s, self.id, i)
            else:
                choice["text"] = s.text
            choice["logprobs"] = self.logprobs(s.logprobs)
            choice["finish_reason"] = s.finish_reason
            choices.append(choice)
        return {
            "id": self.id,
            "object": "chat.completion" if self.req.kind == "chat" else "text_completion",
            "created": self.created,
            "model": self.req.model,
            "choices": choices,
            "usage": self.usage(),
        }

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        obj = "chat.completion.chunk" if self.req.kind == "chat" else "text_completion"
        body = {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.req.model,
            "choices": choices,
            **extra,
        }
        return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"

    def token_chunk(self, c: int, t: int) -> bytes:
        s = self.samples[c]
        if t < len(s.reasoning_tokens):
            choice = {"index": c, "delta": {"reasoning_content": s.reasoning_tokens[t]}}
            return self.chunk([{**choice, "logprobs": None, "finish_reason": None}])
        t -= len(s.reasoning_tokens)
        if t == len(s.tokens):  # the step after the text: the function calls
            calls = [{"index": k, **call} for k, call in enumerate(tool_calls_json(s, self.id, c))]
            choice = {"index": c, "delta": {"tool_calls": calls}}
            return self.chunk([{**choice, "logprobs": None, "finish_reason": None}])
        token = s.tokens[t]
        lps = None
        if s.logprobs is not None:
            offset = sum(len(x) for x in s.tokens[:t]) if not self.chat_layout else 0
            lps = self.logprobs(s.logprobs[t : t + 1], offset)
        if self.req.kind == "chat":
            choice = {"index": c, "delta": {"content": token}}
        else:
            choice = {"index": c, "text": token}
        return self.chunk([{**choice, "logprobs": lps, "finish_reason": None}])

    def finish_chunk(self, c: int) -> bytes:
        key, empty = ("delta", {}) if self.req.kind == "chat" else ("text", "")
        reason = self.samples[c].finish_reason
        return self.chunk([{"index": c, key: empty, "logprobs": None, "finish_reason": reason}])
