"""A finished job as a chat.completion, or as the chunks of one.

``id`` is the job id, ``usage`` counts every internal model call of the one job
(whatever ``n``), and a ``ponder`` extension carries the answer, the votes and the
trace's URL. Choice 0 is the job's answer (content, ``tool_calls`` or JSON); with
``n`` > 1 the runners-up of its vote follow (``app.api.openai.choices``), each with a
``ponder`` object naming its answer and votes.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi.sse import format_sse_event

from app.api.openai.choices import Alternative
from app.api.openai.finished import Finished
from app.api.openai.outcomes import stopped_on_budget

FinishReason = Literal["stop", "length", "tool_calls"]


def usage(job: Finished) -> dict[str, Any]:
    spent = job.usage or {}
    prompt = int(spent.get("prompt_tokens", 0))
    completion = int(spent.get("completion_tokens", 0))
    # Reasoning tokens are a part of completion_tokens, as OpenAI reports them.
    reasoning = int(spent.get("reasoning_tokens", 0))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


def content(job: Finished) -> str | None:
    result = job.result or {}
    if result.get("tool_calls"):
        return str(result.get("text") or "") or None
    if (job.conversation or {}).get("answer_kind") == "json" and result.get("answer"):
        # The canonical JSON that won the vote: it parses and validates, where the
        # sample's own text may have wrapped it in a fenced block.
        return str(result["answer"])
    return str(result.get("text") or result.get("answer") or "")


def tool_calls(job: Finished) -> list[dict[str, Any]] | None:
    calls = (job.result or {}).get("tool_calls") or []
    return [
        {
            "id": call.get("id") or f"call_{job.id[:8]}_{i}",
            "type": "function",
            "function": {"name": call["name"], "arguments": call.get("arguments") or "{}"},
        }
        for i, call in enumerate(calls)
    ] or None


def message(job: Finished) -> dict[str, Any]:
    said: dict[str, Any] = {"role": "assistant", "content": content(job)}
    calls = tool_calls(job)
    if calls:
        said["tool_calls"] = calls
    return said


def extension(job: Finished) -> dict[str, Any]:
    result, spent = job.result or {}, job.usage or {}
    found: dict[str, Any] = {
        "job_id": job.id,
        "status": job.status,
        "answer": result.get("answer"),
        "votes": result.get("votes") or {},
        "budget_exhausted": stopped_on_budget(job),
        "calls": spent.get("calls", 0),
        "cost": spent.get("cost", 0.0),
        "cost_known": spent.get("cost_known", True),
        "trace": f"/v1/jobs/{job.id}/trace",
    }
    if job.error:
        found["error"] = job.error  # a time limit answered as "length"
    return found


def finish_reason(job: Finished) -> FinishReason:
    if (job.result or {}).get("tool_calls"):
        return "tool_calls"
    return "length" if stopped_on_budget(job) else "stop"


def _runner_up(alternative: Alternative) -> dict[str, Any]:
    return {"answer": alternative.answer, "votes": alternative.votes}


def completion(job: Finished, model: str, alternatives: list[Alternative]) -> dict[str, Any]:
    votes = (job.result or {}).get("votes") or {}
    first: dict[str, Any] = {
        "index": 0,
        "message": message(job),
        "logprobs": None,
        "finish_reason": finish_reason(job),
    }
    if alternatives:
        answer = (job.result or {}).get("answer")
        first["ponder"] = {"answer": answer, "votes": votes.get(answer, 0)}
    choices = [first] + [
        {
            "index": i,
            "message": {"role": "assistant", "content": alt.content},
            "logprobs": None,
            "finish_reason": "stop",
            "ponder": _runner_up(alt),
        }
        for i, alt in enumerate(alternatives, start=1)
    ]
    return {
        "id": job.id,
        "object": "chat.completion",
        "created": int(job.created_at.timestamp()),
        "model": model,
        "choices": choices,
        "usage": usage(job),
        "system_fingerprint": None,
        "ponder": extension(job),
    }


def chunk(job_id: str, model: str, created: int, choices: list[Any], **extra: Any) -> bytes:
    data = {
        "id": job_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
        **extra,
    }
    return format_sse_event(data_str=json.dumps(data))


def final_chunks(
    job: Finished,
    model: str,
    created: int,
    alternatives: list[Alternative],
    include_usage: bool,
    *,
    content_sent: bool = False,
) -> list[bytes]:
    """The answer's chunks after the progress: content (or tool calls) per choice, then
    each choice's finish reason, the last carrying the ``ponder`` extension, then usage.
    ``content_sent``: the answer's text already went out token by token."""
    delta: dict[str, Any] = {"content": "" if content_sent else content(job)}
    calls = tool_calls(job)
    if calls:
        delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(calls)]
    out = [chunk(job.id, model, created, [{"index": 0, "delta": delta, "finish_reason": None}])]
    for i, alt in enumerate(alternatives, start=1):
        opening = {"role": "assistant", "content": alt.content}
        out.append(
            chunk(
                job.id,
                model,
                created,
                [{"index": i, "delta": opening, "finish_reason": None, "ponder": _runner_up(alt)}],
            )
        )
    ends = [(0, finish_reason(job))] + [(i, "stop") for i in range(1, len(alternatives) + 1)]
    for position, (index, reason) in enumerate(ends):
        extra = {"ponder": extension(job)} if position == len(ends) - 1 else {}
        out.append(
            chunk(
                job.id,
                model,
                created,
                [{"index": index, "delta": {}, "finish_reason": reason}],
                **extra,
            )
        )
    if include_usage:
        out.append(chunk(job.id, model, created, [], usage=usage(job)))
    return out
