"""What the OpenAI face answers for a job's outcome, and every error in OpenAI's shape.

Statuses follow what clients do with them. The ``openai`` SDK (and LangChain, LiteLLM
and the Agents SDK, which call through it) retries 408, 409, 429, every 5xx and
connection errors, twice by default, unless the response says ``x-should-retry: false``
(``openai/_base_client.py``, ``_should_retry``). A job that failed for a reason a retry
cannot fix is therefore never a retryable status; and whatever the status, a retry finds
the job it already started (``app.api.openai.retries``), so it never pays twice.

    job outcome                           HTTP  error.type / finish_reason    retry
    succeeded                             200   finish_reason "stop"          -
    succeeded, budget exhausted           200   finish_reason "length"        -
    failed: time_limit (wall seconds)     200   finish_reason "length", ""    -
    failed: bad input (invalid_input,     400   invalid_request_error,        no
      unknown_strategy, preset_not_found,        param: the job error's field
      journal_miss, any error naming a
      field)
    failed: model_http_error, the model   400   invalid_request_error         no
      server refused the request (400,
      413, 422: too long, bad params)
    cancelled (on request, or the         409   conflict_error                no (*)
      client closed its stream)
    failed: pool_unavailable              503   server_error, Retry-After 1   yes (**)
    failed: model_timeout                 504   server_error                  yes (**)
    failed: model_error                   502   server_error                  yes (**)
    failed: anything else (internal_error,500   server_error                  no (*)
      worker_lost, config_error, an
      upstream 401/403/404...)
    still running after chat_timeout_s    504   server_error (job_timeout)    yes: the
                                                                              retry waits
                                                                              on the same
                                                                              job

(*) sent with ``x-should-retry: false``: the openai SDK then does not retry; any other
client's retry gets the same answer from the same job, for free. A bug or an operator's
mistake stays a 500 rather than pretend to be the caller's fault.
(**) the pool client already retried with backoff and failover; a later retry may find
the pool back. It runs a *live replay* of the failed job: the calls the job made come
from its journal, only what is missing is called.

The job's error code is ``error.job_error``; ``error.code`` is ``job_failed``,
``job_cancelled`` or ``job_timeout``; ``error.job_id`` names the job.

Errors raised while handling a request (bad body, unknown model, rate limit, a key)
come out of ``OpenAIRoute`` in the same shape, with 400 (OpenAI's status for every
invalid request) where Ponder's other endpoints answer 422.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from app.api.errors import RETRY_AFTER_S, Unauthorized, openai_error_body, request_id_of
from app.api.errors import validation_error as ponder_validation_error
from app.api.openai.finished import Finished
from core.db.models import JobStatus
from core.errors import InvalidInput, NotFound, PonderError

log = logging.getLogger(__name__)


class ModelNotFound(NotFound):
    code = "model_not_found"


class JobTimedOut(PonderError):
    code = "job_timeout"
    status = 504


class JobCancelled(PonderError):
    code = "job_cancelled"
    status = 409


class JobFailed(PonderError):
    code = "job_failed"

    def __init__(self, message: str, *, status: int, **details: Any) -> None:
        super().__init__(message, **details)
        self.status = status


INPUT_ERRORS = frozenset({"invalid_input", "unknown_strategy", "preset_not_found", "journal_miss"})
TRANSIENT = {"pool_unavailable": 503, "model_timeout": 504, "model_error": 502}
"""Job error codes a later retry may fix, and their statuses."""
REFUSED_UPSTREAM = frozenset({400, 413, 422})
"""A model server's refusals that are about the request, not the server's setup."""
STOPPED_ON_BUDGET = frozenset({"time_limit"})
"""Failures that are a budget running out: answered like an exhausted token budget."""


@dataclass(frozen=True)
class Refusal:
    """A job outcome that is not an answer: the error to send, and whether a retry may
    change it."""

    error: PonderError
    retryable: bool


def job_error_code(job: Finished) -> str | None:
    code = (job.error or {}).get("code")
    return code if isinstance(code, str) else None


def answered(job: Finished) -> bool:
    """The job ends in a chat.completion (possibly empty, ``length``), not an error."""
    if job.status == JobStatus.SUCCEEDED:
        return True
    return job.status == JobStatus.FAILED and job_error_code(job) in STOPPED_ON_BUDGET


def stopped_on_budget(job: Finished) -> bool:
    return bool((job.result or {}).get("budget_exhausted")) or (
        job.status == JobStatus.FAILED and job_error_code(job) in STOPPED_ON_BUDGET
    )


def refusal(job: Finished | None, job_id: str, timeout_s: float) -> Refusal | None:
    """None when the job answers (``answered``); else the error, by the module's table."""
    if job is None:
        return Refusal(
            JobTimedOut(
                f"job {job_id} did not finish within {timeout_s:g}s; it keeps running, and "
                f"a retry of this request waits for it: GET /v1/jobs/{job_id}",
                job_id=job_id,
            ),
            retryable=True,
        )
    if answered(job):
        return None
    error = job.error or {}
    code = job_error_code(job)
    said = f"job {job.id} {job.status}: {error.get('message', 'no answer')}"
    if job.status == JobStatus.CANCELLED:
        return Refusal(JobCancelled(said, job_id=job.id, job_error=code), retryable=False)
    status, retryable = _failure_status(error)
    field = error.get("field")
    details: dict[str, Any] = {"job_id": job.id, "job_error": code}
    if isinstance(field, str) and status == 400:
        details["field"] = field
    return Refusal(JobFailed(said, status=status, **details), retryable=retryable)


def _failure_status(error: dict[str, Any]) -> tuple[int, bool]:
    code = error.get("code")
    if code in TRANSIENT:
        return TRANSIENT[str(code)], True
    # Any InvalidInput (the family records "field", even when None) is the request's fault.
    if code in INPUT_ERRORS or "field" in error:
        return 400, False
    if code == "model_http_error" and error.get("upstream_status") in REFUSED_UPSTREAM:
        return 400, False
    return 500, False


def refusal_response(refused: Refusal, request_id: str | None) -> JSONResponse:
    headers: dict[str, str] = {}
    if not refused.retryable:
        headers["x-should-retry"] = "false"
    elif refused.error.status == 503:
        headers["Retry-After"] = "1"
    return openai_error_response(refused.error, request_id, headers=headers)


def openai_error_response(
    exc: PonderError, request_id: str | None, *, headers: dict[str, str] | None = None
) -> JSONResponse:
    # OpenAI answers every invalid request with 400; Ponder's 422s become that here.
    status = 400 if isinstance(exc, InvalidInput) and exc.status == 422 else exc.status
    sent = dict(headers or {})
    if status == 409:
        # The SDK retries 409 (a lock timeout, for OpenAI); here it is a reused
        # Idempotency-Key or a cancelled job, which the same request meets again.
        sent["x-should-retry"] = "false"
    if isinstance(exc, Unauthorized):
        sent["WWW-Authenticate"] = "Bearer"
    retry_after = getattr(exc, "retry_after_s", None) or RETRY_AFTER_S.get(exc.code)
    if retry_after is not None:
        sent["Retry-After"] = str(retry_after)
    body = openai_error_body(exc, request_id, status=status)
    return JSONResponse(body, status_code=status, headers=sent)


class OpenAIRoute(APIRoute):
    """A route whose errors, its dependencies' included (the key, the rate limit, the
    body's validation), come out in OpenAI's shape (see ``openai_error_body``)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                error = ponder_validation_error(exc)
                return openai_error_response(error, request_id_of(request.scope))
            except PonderError as exc:
                if exc.status >= 500:
                    log.warning("%s %s -> %s: %s", request.method, request.url.path, exc.code, exc)
                return openai_error_response(exc, request_id_of(request.scope))

        return handle
