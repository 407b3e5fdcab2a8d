"""An OpenAI-compatible face: ``POST /v1/chat/completions``, ``GET /v1/models`` and
``GET /v1/models/{id}``.

The model name picks a strategy, ``ponder/<kind>`` (``ponder/self_consistency``,
``ponder/direct``), or one of the tenant's presets, ``ponder/<preset>`` (see
``core.presets``). The whole conversation is the job's input, with its ``tools``,
``tool_choice`` and ``response_format`` (``core.conversations``); the answer comes back
as content, as ``tool_calls`` (``finish_reason: "tool_calls"``), or as JSON that
parses and validates. The request submits an ordinary job (or finds the one it started,
when it is a retry: ``app.api.openai.retries``), waits for it (at most
``ApiSettings.chat_timeout_s``) and answers in the chat.completion shape
(``app.api.openai.completions``); ``n`` > 1 adds the job's runners-up as choices.
Errors are OpenAI's shape, with statuses chosen so that clients retry only what a retry
can fix (``app.api.openai.outcomes``).

Sampling fields (``temperature``, ``max_tokens``...) are accepted and ignored: the
strategy decides how its internal calls sample. An optional ``ponder`` object in the
request sets strategy parameters, a budget and role overrides, as ``POST /v1/jobs`` does.
``stream: true`` sends the role at once, a progress chunk per sample and vote while the
job runs (keep-alive comments when nothing happens), then the answer, as
chat.completion.chunk SSE ending with ``[DONE]``; closing the stream cancels the job
(``app.api.openai.streaming``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import nullcontext
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.sse import KEEPALIVE_COMMENT, format_sse_event
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.api.deps import ApiState, State, Tenant
from app.api.errors import openai_error_body, request_id_of
from app.api.executor import JobRun
from app.api.inputs import check_json
from app.api.interactive import Claim, LaneExecutor
from app.api.openai import choices, completions, retries
from app.api.openai.finished import Finished, ran_here
from app.api.openai.outcomes import ModelNotFound, OpenAIRoute, refusal, refusal_response
from app.api.openai.streaming import Follow, cancel_when_closed
from app.api.schemas import JobCreate
from app.api.services.system import MODEL_PREFIX
from app.api.sse import HEADERS
from core import presets
from core.context import ANSWER_DELTA
from core.db import repo
from core.db.models import Job, JobStatus, Preset
from core.errors import InvalidInput, NotFound
from core.specs import validate_spec
from core.tools.backends import PYTHON, unavailable_here
from core.trace import SpanListener
from strategies.protocol import AnswerKind
from strategies.registry import STRATEGIES, tools_used

router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute)

MAX_CHOICES = 8
"""The most ``n`` a request may ask for: the top distinct answers of its one job."""


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
        check_json(data)  # NUL, NaN/Infinity, nesting: a 400 naming the field
        return data

    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(
        default=1,
        ge=1,
        le=MAX_CHOICES,
        description="Choices: the job's top distinct answers by votes (fewer when it found "
        "fewer). One job whatever n; usage counts it once.",
    )
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    ponder: PonderOptions | None = None


async def _base_spec(state: ApiState, tenant: str, model: str) -> dict[str, Any]:
    """``ponder/<strategy>`` or ``ponder/<preset>`` as the start of a job's strategy. A
    preset is read here, once, as its spec: the submit has no name left to look up."""
    name = model[len(MODEL_PREFIX) :] if model.startswith(MODEL_PREFIX) else None
    if name in STRATEGIES:
        return {"kind": name}
    async with state.sessions() as session:
        preset = await presets.get_preset(session, tenant, name) if name else None
        if preset is not None:
            return dict(preset.spec)
        names = [p.name for p in await presets.list_presets(session, tenant)]
    valid = [MODEL_PREFIX + k for k in sorted(STRATEGIES)] + [MODEL_PREFIX + n for n in names]
    raise ModelNotFound(
        f"model {model!r} does not exist; models: {', '.join(valid)}",
        field="model",
        valid=valid,
    )


async def _wait(
    state: ApiState, job: Job, timeout_s: float, run: JobRun | None = None
) -> Finished | None:
    """The finished job, or None if it is still running when the time is up.

    ``run`` is the job's run in this process (the interactive lane): awaited, not polled,
    and when it saved the job's outcome that outcome is the answer, with no read of the
    row (``app.api.openai.finished``). Otherwise the database is the answer's source:
    the poll below also finds a job that the lane's run left unfinished (its lease lost,
    a worker took it over)."""
    deadline = time.monotonic() + timeout_s
    if run is not None:
        # asyncio.wait never cancels what it waits for: a request that times out or goes
        # away leaves the run going, as a broker's job would (POST /v1/jobs/{id}/cancel).
        await asyncio.wait({run}, timeout=timeout_s)
        ended = ran_here(job, run)
        if ended is not None:
            return ended
    delay = 0.02
    while True:
        async with state.sessions() as session:
            progress = await repo.job_progress(session, job.id)
            if progress is None:
                raise NotFound(f"job {job.id} not found")
            if progress[0] in JobStatus.FINAL:
                return await repo.get_job(session, job.id)
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
        delay = min(delay * 1.5, 0.25)


def _strategy_model(kind: str) -> dict[str, Any]:
    return {"id": MODEL_PREFIX + kind, "object": "model", "created": 0, "owned_by": "ponder"}


def _preset_model(preset: Preset, tenant: str) -> dict[str, Any]:
    return {
        "id": MODEL_PREFIX + preset.name,
        "object": "model",
        "created": int(preset.created_at.timestamp()),
        "owned_by": "ponder" if preset.shipped else tenant,
    }


@router.get("/models")
async def list_models(state: State, tenant: Tenant) -> dict[str, Any]:
    """Every strategy, then the tenant's presets, as OpenAI model objects."""
    async with state.sessions() as session:
        saved = await presets.list_presets(session, tenant)
    models = [_strategy_model(kind) for kind in sorted(STRATEGIES)]
    models += [_preset_model(p, tenant) for p in saved]
    return {"object": "list", "data": models}


# ":path": model ids hold a slash (ponder/direct), which a plain parameter stops at.
@router.get("/models/{model_id:path}")
async def get_model(model_id: str, state: State, tenant: Tenant) -> dict[str, Any]:
    """One strategy or preset as an OpenAI model object; 404 ``model_not_found``."""
    name = model_id[len(MODEL_PREFIX) :] if model_id.startswith(MODEL_PREFIX) else None
    if name in STRATEGIES:
        return _strategy_model(name)
    if name is not None:
        async with state.sessions() as session:
            preset = await presets.get_preset(session, tenant, name)
        if preset is not None:
            return _preset_model(preset, tenant)
    raise ModelNotFound(
        f"model {model_id!r} does not exist (GET /v1/models lists them)", field="model"
    )


def _job_request(body: ChatCompletionRequest, base: dict[str, Any]) -> JobCreate:
    options = body.ponder or PonderOptions()
    overrides = dict(options.strategy or {})
    overrides.pop("kind", None)
    overrides.pop("preset", None)
    try:
        return JobCreate(
            messages=body.messages,
            tools=body.tools,
            tool_choice=body.tool_choice,
            response_format=body.response_format,
            answer_kind=options.answer_kind,
            strategy={**base, **overrides},  # as a preset's overrides merge
            budget=options.budget,
            roles=options.roles,
            seed=body.seed,
            stream=body.stream,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"][:1] != ("strategy",) else "ponder"
        raise InvalidInput(f"{field}: {first['msg']}", field=field) from None


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest,
    http: Request,
    state: State,
    tenant: Tenant,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    retry_count: Annotated[str | None, Header(alias=retries.RETRY_COUNT_HEADER)] = None,
) -> JSONResponse | StreamingResponse:
    """Run a strategy preset as if it were a model; see the module doc."""
    request = _job_request(body, await _base_spec(state, tenant, body.model))
    lane = state.executor if isinstance(state.executor, LaneExecutor) else None
    if lane is not None and await _tools_need_a_worker(state, tenant, request):
        lane = None
    with lane.claim() if lane is not None else nullcontext(Claim()) as claim:
        deltas: asyncio.Queue[str] = asyncio.Queue()
        if body.stream:
            claim.listeners.append(_answer_deltas(deltas))
        job = await retries.submit(
            state,
            tenant,
            request,
            body=body.model_dump(mode="json"),
            idempotency_key=idempotency_key,
            retries=retries.retry_count(retry_count),
        )
    timeout_s = state.api.chat_timeout_s
    if body.stream:
        # The answer's tokens come straight from the run when this process runs the job.
        tokens = deltas if claim.task is not None else None
        stream = _stream(state, tenant, job, body, request_id_of(http.scope), claim.task, tokens)
        return StreamingResponse(stream, media_type="text/event-stream", headers=HEADERS)
    finished = await _wait(state, job, timeout_s, claim.task)
    refused = refusal(finished, job.id, timeout_s)
    if refused is not None:
        return refusal_response(refused, request_id_of(http.scope))
    assert finished is not None
    runners_up = await choices.alternatives(state.sessions, finished, body.n)
    return JSONResponse(completions.completion(finished, body.model, runners_up))


async def _stream(
    state: ApiState,
    tenant: str,
    job: Job,
    body: ChatCompletionRequest,
    request_id: str | None,
    run: JobRun | None = None,
    tokens: asyncio.Queue[str] | None = None,
) -> AsyncIterator[bytes]:
    model, created = body.model, int(job.created_at.timestamp())
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    timeout_s = state.api.chat_timeout_s
    follow = Follow(state, job, time.monotonic() + timeout_s, run)
    followed = False  # to the job's end or the deadline: the client stayed
    try:
        opening = {"role": "assistant", "content": ""}
        yield completions.chunk(
            job.id, model, created, [{"index": 0, "delta": opening, "finish_reason": None}]
        )
        streamed = False
        async for kind, item in _merged(follow.events(), tokens):
            if kind == "token":
                streamed = True
                delta = [{"index": 0, "delta": {"content": item}, "finish_reason": None}]
                yield completions.chunk(job.id, model, created, delta)
            elif item is None:
                yield KEEPALIVE_COMMENT
            else:
                empty = [{"index": 0, "delta": {"content": ""}, "finish_reason": None}]
                yield completions.chunk(job.id, model, created, empty, ponder={"progress": item})
        followed = True
        finished = follow.job
        refused = refusal(finished, job.id, timeout_s)
        if refused is not None:
            # The openai client raises an APIError on a chunk carrying "error".
            yield format_sse_event(
                data_str=json.dumps(openai_error_body(refused.error, request_id))
            )
            yield format_sse_event(data_str="[DONE]")
            return
        assert finished is not None
        runners_up = await choices.alternatives(state.sessions, finished, body.n)
        final = completions.final_chunks(
            finished, model, created, runners_up, include_usage, content_sent=streamed
        )
        for part in final:
            yield part
        yield format_sse_event(data_str="[DONE]")
    finally:
        if not followed:
            # The client closed the stream before the job ended: the user's stop.
            cancel_when_closed(state, tenant, job.id)


def _answer_deltas(queue: asyncio.Queue[str]) -> SpanListener:
    """A run listener that passes the answer's streamed text (``ctx.show``) on."""

    def listen(kind: str, payload: dict[str, Any]) -> None:
        if kind == ANSWER_DELTA:
            queue.put_nowait(str(payload["text"]))

    return listen


async def _merged(
    progress: AsyncIterator[dict[str, Any] | None], tokens: asyncio.Queue[str] | None
) -> AsyncIterator[tuple[str, Any]]:
    """The job's progress (``("progress", dict | None)``) and, from a run in this
    process, the answer's text as it is generated (``("token", str)``), in arrival
    order; ends when the progress does, after the tokens already queued."""
    if tokens is None:
        async for item in progress:
            yield "progress", item
        return
    events = aiter(progress)
    next_event: asyncio.Task[dict[str, Any] | None] = asyncio.ensure_future(anext(events))
    try:
        while True:
            token = asyncio.ensure_future(tokens.get())
            done, _ = await asyncio.wait({next_event, token}, return_when=asyncio.FIRST_COMPLETED)
            if token in done:
                yield "token", token.result()
                continue
            token.cancel()
            try:
                item = next_event.result()
            except StopAsyncIteration:
                while not tokens.empty():
                    yield "token", tokens.get_nowait()
                return
            yield "progress", item
            next_event = asyncio.ensure_future(anext(events))
    finally:
        next_event.cancel()


async def _sandbox_refusal(state: ApiState) -> str | None:
    """``unavailable_here(PYTHON, settings)``, asked once per setting: the probe behind it
    is cached for the process's life (``core.tools.bwrap.probe``), so only the first
    request needs the thread that may run it; later ones get the answer without a hop."""
    key = state.settings.python_tool
    known = state.sandbox_refusals
    if key not in known:
        known[key] = await asyncio.to_thread(unavailable_here, PYTHON, state.settings)
    return known[key]


async def _tools_need_a_worker(state: ApiState, tenant: str, request: JobCreate) -> bool:
    """Whether the job names a tool this API process cannot run (the sandbox in an API
    container without a worker's privileges): the lane then leaves it to the workers,
    which can, instead of failing it here. Only the sandbox depends on the process, and
    its probe is cached: where it can run, no spec is parsed twice on this hot path."""
    if await _sandbox_refusal(state) is None:
        return False
    if isinstance(request.strategy, str):
        spec: dict[str, Any] = {"kind": request.strategy}
    else:
        spec = dict(request.strategy or {})
    if not spec:
        return False
    resolved = await presets.resolve_strategy(state.sessions, tenant, spec)
    try:
        return PYTHON in tools_used(validate_spec(resolved))
    except InvalidInput:
        return False  # the submit names the field
