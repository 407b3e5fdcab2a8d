"""No client retry pays for a job twice: a retried chat request finds the job it started.

What clients send when they retry. The ``openai`` SDK (3.x, ``_base_client.py``; the
Agents SDK, LangChain and LiteLLM call through it) retries a request on a connection
error, a read timeout, 408, 409, 429 and any 5xx, twice by default, with 0.5-8 s of
backoff (or the ``Retry-After`` it was given, up to 120 s). Each attempt sends the same
body and headers plus ``x-stainless-retry-count: <n>`` (0 on the first attempt) and
``x-stainless-read-timeout``. It makes up an idempotency key per call, but sends it only
for client classes that name a header for it, and ``OpenAI`` names none: no
``Idempotency-Key`` arrives.

So a request reuses an earlier job when:

1. it carries ``Idempotency-Key``: ``jobs.submit``'s rule (the earlier job for the same
   request, at any time; 409 for a different request);
2. it says it is a retry (``x-stainless-retry-count`` > 0): the newest job this tenant
   started for the same body (tenant + canonical body: the *fingerprint*) in the last
   ``LOOKBACK_S`` is followed to its newest live replay (what earlier retries made of
   it), and
   - still queued or running: the request waits on it (a 504 ``job_timeout`` retried
     attaches to the same running job; a queued one is published again, in case its
     first publish failed);
   - finished within ``RETRY_WINDOW_S``: its outcome is the answer, unless it failed for
     a reason a retry may fix (``outcomes.TRANSIENT``): then a live replay of it runs,
     its journaled calls free, and that is the answer;
   - otherwise a new job.
3. Anything else is a new job, even for a body seen before. A model asked the same thing
   twice samples twice: evals send identical requests on purpose (pass@k), and sharing
   one job between them would be wrong. A client that retries without saying so (curl,
   a gateway) should send ``Idempotency-Key``.

The fingerprint rides in the job's idempotency key, ``openai-retry:<sha256>:<nonce>``:
the nonce keeps each fresh request its own job, the prefix finds them again. Two
identical requests retried at the same moment may both attach to the newer job: they
then get the same answer, and still nobody pays twice.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import timedelta
from typing import Any

from app.api.deps import ApiState
from app.api.openai import repository
from app.api.openai.outcomes import TRANSIENT, job_error_code
from app.api.schemas import JobCreate, ReplayCreate
from app.api.services import jobs
from core.db.models import Job, JobStatus, utcnow

RETRY_COUNT_HEADER = "x-stainless-retry-count"
KEY_PREFIX = "openai-retry:"
LOOKBACK_S = 3600.0
"""How far back a retry looks for its job: three attempts of the SDK's default 600 s
read timeout, with their backoff, fit well inside."""
RETRY_WINDOW_S = 300.0
"""How long after a job finished a retry still gets its outcome. A retry follows the
attempt that failed by at most the SDK's backoff (8 s) or Retry-After (120 s); the job
it waited on finished no earlier than that attempt ended, or the attempt would have
been answered."""


def retry_count(value: str | None) -> int:
    """The SDK's ``x-stainless-retry-count``; anything unreadable counts as a first try."""
    try:
        return max(int(value or 0), 0)
    except ValueError:
        return 0


def fingerprint(tenant: str, body: dict[str, Any]) -> str:
    canonical = json.dumps(
        {"tenant": tenant, "body": body}, sort_keys=True, separators=(",", ":"), default=str
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


async def submit(
    state: ApiState,
    tenant: str,
    request: JobCreate,
    *,
    body: dict[str, Any],
    idempotency_key: str | None,
    retries: int,
) -> Job:
    """The job that answers this chat request: an earlier one (see the module doc) or a
    new one. Call inside the interactive lane's ``claim()``: a new job or a replay runs
    in this process when the lane has room."""
    if idempotency_key is not None:
        job, _ = await jobs.submit(state, tenant, request, idempotency_key)
        return job
    prefix = f"{KEY_PREFIX}{fingerprint(tenant, body)}:"
    if retries > 0:
        reused = await _reuse(state, tenant, request, prefix)
        if reused is not None:
            return reused
    # A key minted here, with a random nonce: no earlier job can hold it.
    job, _ = await jobs.submit(
        state, tenant, request, prefix + secrets.token_hex(8), fresh_key=True
    )
    return job


async def _reuse(state: ApiState, tenant: str, request: JobCreate, prefix: str) -> Job | None:
    now = utcnow()
    async with state.sessions() as session:
        first = await repository.newest_with_key_prefix(
            session, tenant, prefix, now - timedelta(seconds=LOOKBACK_S)
        )
        job = first
        while job is not None:
            child = await repository.newest_live_replay(session, tenant, job.id)
            if child is None:
                break
            job = child
    if first is None or job is None:
        return None
    if job.status not in JobStatus.FINAL:
        if job is first and job.status == JobStatus.QUEUED and first.idempotency_key:
            # Through the key: jobs.submit publishes a queued job again (its first
            # publish may be why the client is retrying: a 503 enqueue_failed).
            again, _ = await jobs.submit(state, tenant, request, first.idempotency_key)
            return again
        return job
    finished = job.finished_at or job.created_at
    if now - finished > timedelta(seconds=RETRY_WINDOW_S):
        return None
    if job.status == JobStatus.FAILED and job_error_code(job) in TRANSIENT:
        return await jobs.replay(state, tenant, job.id, ReplayCreate(mode="live"))
    return job
