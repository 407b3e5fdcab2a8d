"""Ponder's trace rows as OpenTelemetry spans: ids, times, and the attributes viewers read.

Ids: a job's trace id *is* its job id (both 128 bits), so any process that touches a job
(the API that took it, every worker run, a resume after a crash) writes into the same
trace without being told, and an operator finds the trace in Tempo or Phoenix by job id.
A span's id is the first 64 bits of its Ponder span id (random, never zero: the uuid4
version nibble sits in them), so the exported tree is the tree ``ponder trace`` shows.

Attributes, per span:

- every Ponder attribute as ``ponder.<name>`` (dicts as JSON), and ``ponder.job_id``,
  ``ponder.span_id``, ``ponder.kind``, ``ponder.strategy`` (the nearest
  strategy above), tokens and cost;
- model calls: the GenAI semantic conventions (``gen_ai.*``: operation ``chat``, the
  system, request and response model, token usage, finish reasons, request parameters)
  and OpenInference's (``openinference.span.kind`` ``LLM``, ``llm.model_name``,
  ``llm.token_count.*``, ``llm.input_messages``/``llm.output_messages``, ``input.value``,
  ``output.value``), which Phoenix renders;
- tool calls: ``TOOL`` with ``tool.name`` and the arguments and output as input/output;
- job, strategy and step spans: ``CHAIN``. Decisions (votes, stops, clamps) are span
  events on the span that made them.

Texts are cut to ``MAX_TEXT`` characters and conversations to their last
``MAX_MESSAGES`` messages: a trace viewer needs to recognise a call, not archive it (the
journal has every byte).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

MAX_TEXT = 2000
MAX_MESSAGES = 8
GEN_AI_SYSTEM = "openai"
"""Every pool speaks the OpenAI protocol (vLLM, llama.cpp, OpenAI): the convention's value
for an OpenAI-compatible client, as OpenTelemetry's own OpenAI instrumentation sets it."""
SCOPE = InstrumentationScope("ponder")
OPENINFERENCE_KIND = {
    "job": "CHAIN",
    "strategy": "CHAIN",
    "span": "CHAIN",
    "model_call": "LLM",
    "tool_call": "TOOL",
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)

Attrs = dict[str, str | bool | int | float | Sequence[str] | Sequence[int] | Sequence[float]]


def trace_id_of(job_id: str) -> int:
    """The trace id of a job: its id read as a 128-bit number."""
    return int(job_id, 16)


def span_id_of(ponder_span_id: str) -> int:
    """The OTel span id of a Ponder span: the first 64 bits of its id."""
    return int(ponder_span_id[:16], 16)


def context_of(job_id: str, span_id: int, *, remote: bool = False) -> SpanContext:
    return SpanContext(trace_id_of(job_id), span_id, is_remote=remote, trace_flags=_SAMPLED)


def ns(moment: datetime) -> int:
    """A timestamp in ns since the epoch, exact to the microsecond (no float rounding)."""
    if moment.tzinfo is None:  # SQLite hands back naive UTC
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def short(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def value(raw: Any) -> Any:
    """An attribute value OTel accepts: primitives and homogeneous primitive lists as
    they are, anything else as (cut) JSON; None for nothing to say."""
    if raw is None or isinstance(raw, str | bool | int | float):
        return short(raw) if isinstance(raw, str) else raw
    if isinstance(raw, list | tuple) and raw:
        kinds = {type(item) for item in raw}
        if len(kinds) == 1 and kinds <= {str, bool, int, float}:
            return [short(item) if isinstance(item, str) else item for item in raw]
    return short(json.dumps(raw, ensure_ascii=False, default=str))


def ponder_attributes(attributes: Mapping[str, Any]) -> Attrs:
    out: Attrs = {}
    for key, raw in attributes.items():
        converted = value(raw)
        if converted is not None:
            out[f"ponder.{key}"] = converted
    return out


def status_of(attributes: Mapping[str, Any]) -> Status:
    """Error when the span ended on an exception (``status`` is its class name) or names
    an ``error``; unset otherwise, as the convention asks of instrumentation."""
    state = attributes.get("status")
    error = attributes.get("error")
    if error:
        return Status(StatusCode.ERROR, short(str(error), 500))
    if state not in (None, "ok"):
        return Status(StatusCode.ERROR, str(state))
    return Status(StatusCode.UNSET)


def model_call_attributes(
    attributes: Mapping[str, Any],
    prompt_tokens: int,
    completion_tokens: int,
    cost: float,
    request: Mapping[str, Any] | None,
    response: Mapping[str, Any] | None,
) -> Attrs:
    """The GenAI and OpenInference attributes of one model call. ``request`` and
    ``response`` are its journal entry's (None on a journal hit: no copy is made)."""
    model = str(attributes.get("model", ""))
    response_model = str((response or {}).get("model") or model)
    out: Attrs = {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": GEN_AI_SYSTEM,
        "gen_ai.provider.name": GEN_AI_SYSTEM,
        "gen_ai.request.model": model,
        "gen_ai.response.model": response_model,
        "gen_ai.usage.input_tokens": prompt_tokens,
        "gen_ai.usage.output_tokens": completion_tokens,
        "llm.system": GEN_AI_SYSTEM,
        "llm.model_name": response_model,
        "llm.token_count.prompt": prompt_tokens,
        "llm.token_count.completion": completion_tokens,
        "llm.token_count.total": prompt_tokens + completion_tokens,
    }
    if cost:
        out["llm.cost.total"] = cost
    reasons = attributes.get("finish_reasons")
    if isinstance(reasons, list) and all(isinstance(r, str) for r in reasons) and reasons:
        out["gen_ai.response.finish_reasons"] = list(reasons)
    if request:
        out.update(_request_attributes(request))
    if response:
        out.update(_response_attributes(response))
    return out


_PARAMS = {
    "max_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "seed": "gen_ai.request.seed",
    "n": "gen_ai.request.choice.count",
}


def _request_attributes(request: Mapping[str, Any]) -> Attrs:
    out: Attrs = {}
    params = {k: v for k, v in request.items() if k not in ("messages", "prompt", "tools")}
    for key, name in _PARAMS.items():
        if isinstance(params.get(key), int | float):
            out[name] = params[key]
    if isinstance(params.get("stop"), list) and params["stop"]:
        out["gen_ai.request.stop_sequences"] = [str(s) for s in params["stop"]]
    out["llm.invocation_parameters"] = short(json.dumps(params, default=str))
    messages = request.get("messages")
    if isinstance(messages, list) and messages:
        shown = messages[-MAX_MESSAGES:]
        offset = len(messages) - len(shown)
        for index, message in enumerate(shown, start=offset):
            if not isinstance(message, Mapping):
                continue
            prefix = f"llm.input_messages.{index}.message"
            out[f"{prefix}.role"] = str(message.get("role", ""))
            out[f"{prefix}.content"] = _text(message.get("content"))
        out["input.value"] = _text(
            shown[-1].get("content") if isinstance(shown[-1], Mapping) else ""
        )
    elif isinstance(request.get("prompt"), str):
        out["input.value"] = short(request["prompt"])
    if "input.value" in out:
        out["input.mime_type"] = "text/plain"
    return out


def _response_attributes(response: Mapping[str, Any]) -> Attrs:
    out: Attrs = {}
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices:
        return out
    for index, choice in enumerate(choices[:MAX_MESSAGES]):
        if not isinstance(choice, Mapping):
            continue
        prefix = f"llm.output_messages.{index}.message"
        out[f"{prefix}.role"] = "assistant"
        out[f"{prefix}.content"] = _text(choice.get("text"))
    first = choices[0]
    if isinstance(first, Mapping):
        out["output.value"] = _text(first.get("text"))
        out["output.mime_type"] = "text/plain"
    return out


def _text(content: Any) -> str:
    if isinstance(content, str):
        return short(content)
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        parts = [p.get("text", "") for p in content if isinstance(p, Mapping)]
        return short("".join(str(p) for p in parts))
    return "" if content is None else short(str(content))


def tool_call_attributes(attributes: Mapping[str, Any]) -> Attrs:
    out: Attrs = {"tool.name": str(attributes.get("tool", ""))}
    arguments, output = attributes.get("arguments"), attributes.get("output")
    if isinstance(arguments, str):
        out["input.value"] = arguments
        out["input.mime_type"] = "application/json"
        out["tool.parameters"] = arguments
    if isinstance(output, str):
        out["output.value"] = output
    return out


def readable(
    *,
    name: str,
    context: SpanContext,
    parent: SpanContext | None,
    resource: Resource,
    attributes: Attrs,
    start_ns: int,
    end_ns: int,
    status: Status | None = None,
    events: Sequence[Event] = (),
    links: Sequence[Link] = (),
    kind: SpanKind = SpanKind.INTERNAL,
) -> ReadableSpan:
    """A finished span, built from what was recorded rather than timed live: its ids,
    times and parent are Ponder's own."""
    return ReadableSpan(
        name=name,
        context=context,
        parent=parent,
        resource=resource,
        attributes=attributes,
        events=events,
        links=links,
        kind=kind,
        status=status or Status(StatusCode.UNSET),
        start_time=start_ns,
        end_time=max(end_ns, start_ns),
        instrumentation_scope=SCOPE,
    )
