"""An OpenAI-compatible face: ``POST /v1/chat/completions`` and ``GET /v1/models``.

The model name picks a strategy, ``ponder/<kind>`` (``ponder/self_consistency``,
``ponder/direct``), or one of the tenant's presets, ``ponder/<preset>`` (see
``core.presets``). The whole conversation is the job's input, with its ``tools``,
``tool_choice`` and ``response_format`` (``core.conversations``); the answer comes back
as content, as ``tool_calls`` (``finish_reason: "tool_calls"``), or as JSON that
parses and validates. The request submits an ordinary job, waits for it (at most
``ApiSettings.chat_timeout_s``) and answers in the chat.completion shape: ``id`` is
the job id, ``usage`` counts every internal model call, and a ``ponder`` extension
carries the answer, the votes and the trace's URL.

Sampling fields (``temperature``, ``max_tokens``...) are accepted and ignored: the
strategy decides how its internal calls sample. An optional ``ponder`` object in the
request sets strategy parameters, a budget and role overrides, as ``POST /v1/jobs`` does.
``stream: true`` sends the role at once, keep-alive comments while the job runs, then the
answer as one content chunk, as chat.completion.chunk SSE ending with ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import nullcontext
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.sse import KEEPALIVE_COMMENT, format_sse_event
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.api.deps import ApiState, State, Tenant
from app.api.errors import error_body
from app.api.inputs import check_json
from app.api.interactive import Claim, LaneExecutor
from app.api.schemas import JobCreate
from app.api.services import jobs
from app.api.services.system import MODEL_PREFIX
from app.api.sse import HEADERS, KEEPALIVE_S
from core import presets
from core.db import repo
from core.db.models import Job, JobStatus
from core.errors import InvalidInput, NotFound, PonderError
from strategies.protocol import AnswerKind
from strategies.registry import STRATEGIES

router = APIRouter(prefix="/v1", tags=["openai"])


class ModelNotFound(NotFound):
    code = "model_not_found"


class JobTimedOut(PonderError):
    code = "job_timeout"
    status = 504


class JobFailed(PonderError):
    code = "job_failed"
    status = 502


class PonderOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    strategy: dict[str, Any] | None = Field(
        default=None, description="Parameters merged into the preset (not `kind`)."
    )
    budget: dict[str, Any] | None = None
    roles: dict[str, str] | None = None
    answer_kind: AnswerKind | None = Field(
        default=None, description="number, json, tool_calls or text (see docs/strategies.md)."
    )


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    # OpenAI clients send many optional fields; unknown ones are ignored, not refused.
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _sane_json(cls, data: Any) -> Any:
        check_json(data)  # NUL, NaN/Infinity, nesting: a 422 naming the field
        return data

    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    ponder: PonderOptions | None = None


async def _base_spec(state: ApiState, tenant: str, model: str) -> dict[str, Any]:
    """``ponder/<strategy>`` or ``ponder/<preset>`` as the start of a job's strategy."""
    name = model[len(MODEL_PREFIX) :] if model.startswith(MODEL_PREFIX) else None
    if name in STRATEGIES:
        return {"kind": name}
    async with state.sessions() as session:
        names = [p.name for p in await presets.list_presets(session, tenant)]
    if name in names:
        return {"preset": name}
    valid = [MODEL_PREFIX + k for k in sorted(STRATEGIES)] + [MODEL_PREFIX + n for n in names]
    raise ModelNotFound(
        f"model {model!r} does not exist; models: {', '.join(valid)}",
        field="model",
        valid=valid,
    )


async def _wait(
    state: ApiState, job_id: str, timeout_s: float, run: asyncio.Task[None] | None = None
) -> Job | None:
    """The finished job, or None if it is still running when the time is up.

    ``run`` is the job's run in this process (the interactive lane): awaited, not polled.
    The database stays the answer's source, so the poll below still finds a job that the
    lane's run left unfinished (its lease lost, a worker took it over)."""
    deadline = time.monotonic() + timeout_s
    if run is not None:
        # asyncio.wait never cancels what it waits for: a request that times out or goes
        # away leaves the run going, as a broker's job would (POST /v1/jobs/{id}/cancel).
        await asyncio.wait({run}, timeout=timeout_s)
    delay = 0.02
    while True:
        async with state.sessions() as session:
            progress = await repo.job_progress(session, job_id)
            if progress is None:
                raise NotFound(f"job {job_id} not found")
            if progress[0] in JobStatus.FINAL:
                return await repo.get_job(session, job_id)
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
        delay = min(delay * 1.5, 0.25)


def _usage(job: Job) -> dict[str, int]:
    usage = job.usage or {}
    prompt = int(usage.get("prompt_tokens", 0))
    completion = int(usage.get("completion_tokens", 0))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _content(job: Job) -> str | None:
    result = job.result or {}
    if result.get("tool_calls"):
        return str(result.get("text") or "") or None
    if (job.conversation or {}).get("answer_kind") == "json" and result.get("answer"):
        # The canonical JSON that won the vote: it parses and validates, where the
        # sample's own text may have wrapped it in a fenced block.
        return str(result["answer"])
    return str(result.get("text") or result.get("answer") or "")


def _tool_calls(job: Job) -> list[dict[str, Any]] | None:
    calls = (job.result or {}).get("tool_calls") or []
    return [
        {
            "id": call.get("id") or f"call_{job.id[:8]}_{i}",
            "type": "function",
            "function": {"name": call["name"], "arguments": call.get("arguments") or "{}"},
        }
        for i, call in enumerate(calls)
    ] or None


def _message(job: Job) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": _content(job)}
    calls = _tool_calls(job)
    if calls:
        message["tool_calls"] = calls
    return message


def _extension(job: Job) -> dict[str, Any]:
    result, usage = job.result or {}, job.usage or {}
    return {
        "job_id": job.id,
        "status": job.status,
        "answer": result.get("answer"),
        "votes": result.get("votes") or {},
        "budget_exhausted": bool(result.get("budget_exhausted")),
        "calls": usage.get("calls", 0),
        "cost": usage.get("cost", 0.0),
        "trace": f"/v1/jobs/{job.id}/trace",
    }


def _finish_reason(job: Job) -> Literal["stop", "length", "tool_calls"]:
    if (job.result or {}).get("tool_calls"):
        return "tool_calls"
    return "length" if (job.result or {}).get("budget_exhausted") else "stop"


def _outcome_error(job: Job | None, job_id: str, timeout_s: float) -> PonderError | None:
    if job is None:
        return JobTimedOut(
            f"job {job_id} did not finish within {timeout_s:g}s; it keeps running: "
            f"GET /v1/jobs/{job_id}",
            job_id=job_id,
        )
    if job.status != JobStatus.SUCCEEDED:
        error = job.error or {}
        return JobFailed(
            f"job {job.id} {job.status}: {error.get('message', 'no answer')}",
            job_id=job.id,
            job_error=error.get("code"),
        )
    return None


@router.get("/models")
async def list_models(state: State, tenant: Tenant) -> dict[str, Any]:
    """Every strategy, then the tenant's presets, as OpenAI model objects."""
    async with state.sessions() as session:
        saved = await presets.list_presets(session, tenant)
    models = [
        {"id": MODEL_PREFIX + kind, "object": "model", "created": 0, "owned_by": "ponder"}
        for kind in sorted(STRATEGIES)
    ]
    models += [
        {
            "id": MODEL_PREFIX + p.name,
            "object": "model",
            "created": int(p.created_at.timestamp()),
            "owned_by": tenant,
        }
        for p in saved
    ]
    return {"object": "list", "data": models}


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest,
    state: State,
    tenant: Tenant,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JSONResponse | StreamingResponse:
    """Run a strategy preset as if it were a model; see the module doc."""
    base = await _base_spec(state, tenant, body.model)
    options = body.ponder or PonderOptions()
    overrides = dict(options.strategy or {})
    overrides.pop("kind", None)
    overrides.pop("preset", None)
    try:
        request = JobCreate(
            messages=body.messages,
            tools=body.tools,
            tool_choice=body.tool_choice,
            response_format=body.response_format,
            answer_kind=options.answer_kind,
            strategy={**overrides, **base},
            budget=options.budget,
            roles=options.roles,
            seed=body.seed,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"][:1] != ("strategy",) else "ponder"
        raise InvalidInput(f"{field}: {first['msg']}", field=field) from None
    lane = state.executor if isinstance(state.executor, LaneExecutor) else None
    with lane.claim() if lane is not None else nullcontext(Claim()) as claim:
        job, _ = await jobs.submit(state, tenant, request, idempotency_key)
    timeout_s = state.api.chat_timeout_s
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        created = int(job.created_at.timestamp())
        stream = _stream(state, job.id, body.model, created, include_usage, claim.task)
        return StreamingResponse(stream, media_type="text/event-stream", headers=HEADERS)
    finished = await _wait(state, job.id, timeout_s, claim.task)
    error = _outcome_error(finished, job.id, timeout_s)
    if error is not None:
        return JSONResponse(error_body(error), status_code=error.status)
    assert finished is not None
    return JSONResponse(
        {
            "id": finished.id,
            "object": "chat.completion",
            "created": int(finished.created_at.timestamp()),
            "model": body.model,
            "choices": [
                {
                    "index": 0,
                    "message": _message(finished),
                    "logprobs": None,
                    "finish_reason": _finish_reason(finished),
                }
            ],
            "usage": _usage(finished),
            "system_fingerprint": None,
            "ponder": _extension(finished),
        }
    )


def _chunk(job_id: str, model: str, created: int, choices: list[Any], **extra: Any) -> bytes:
    data = {
        "id": job_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
        **extra,
    }
    return format_sse_event(data_str=json.dumps(data))


async def _stream(
    state: ApiState,
    job_id: str,
    model: str,
    created: int,
    include_usage: bool,
    run: asyncio.Task[None] | None = None,
) -> AsyncIterator[bytes]:
    yield _chunk(
        job_id,
        model,
        created,
        [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
    )
    timeout_s = state.api.chat_timeout_s
    deadline = time.monotonic() + timeout_s
    finished: Job | None = None
    while True:
        # Waits in slices so a keep-alive comment goes out while a long job runs.
        left = deadline - time.monotonic()
        finished = await _wait(state, job_id, max(min(KEEPALIVE_S, left), 0.0), run)
        if finished is not None or time.monotonic() >= deadline:
            break
        yield KEEPALIVE_COMMENT
    error = _outcome_error(finished, job_id, timeout_s)
    if error is not None:
        # The openai client raises an APIError on a chunk carrying "error".
        yield format_sse_event(data_str=json.dumps(error_body(error)))
        yield format_sse_event(data_str="[DONE]")
        return
    assert finished is not None
    delta: dict[str, Any] = {"content": _content(finished)}
    calls = _tool_calls(finished)
    if calls:
        delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(calls)]
    yield _chunk(job_id, model, created, [{"index": 0, "delta": delta, "finish_reason": None}])
    yield _chunk(
        job_id,
        model,
        created,
        [{"index": 0, "delta": {}, "finish_reason": _finish_reason(finished)}],
        ponder=_extension(finished),
    )
    if include_usage:
        yield _chunk(job_id, model, created, [], usage=_usage(finished))
    yield format_sse_event(data_str="[DONE]")
