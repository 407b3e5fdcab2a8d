"""Which jobs the broker holds: the reaper's way to tell a lost message from a backlog.

On Redis, a published job is either waiting in a queue list (``ponder.high`` and its
priority-step siblings, under the deployment's key prefix) or delivered to a worker
and not yet acknowledged (kombu's ``unacked`` hash, where acks-late keeps it until the
run ends). A queued job in neither place was never published, or Redis lost it (a
restart without append-only); waiting ``queued_timeout_s`` for it helps nobody.

The filesystem broker of embedded mode deletes a message as a worker takes it, so a
prefetched message is invisible there: no inventory (``None``), and the reaper keeps
to its timeout.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import redis

from core.settings import Settings
from workers.celery_app import QUEUE_PREFIX, TASK_RUN_JOB, is_redis


def held_job_ids(settings: Settings) -> set[str] | None:
    """Job ids with a message in a queue or in a worker's hands; None if unknowable.

    Raises:
        redis.RedisError: the broker could not be read (the caller skips this sweep's
            check rather than republish everything).
    """
    url = settings.resolved_broker_url()
    if not is_redis(url):
        return None
    prefix = settings.worker.key_prefix
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        held: set[str] = set()
        for key in client.scan_iter(match=f"{prefix}{QUEUE_PREFIX}.*", count=500, _type="list"):
            for raw in client.lrange(key, 0, -1):
                held.update(_job_ids(_load(raw)))
        for raw in client.hvals(f"{prefix}unacked"):
            entry = _load(raw)
            if isinstance(entry, list) and entry:
                held.update(_job_ids(entry[0]))
        return held
    finally:
        client.close()


def _load(raw: bytes | str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


def _job_ids(message: Any) -> set[str]:
    """The job id of a ``ponder.run_job`` message (Celery protocol 2: args in the body)."""
    if not isinstance(message, dict):
        return set()
    headers = message.get("headers") or {}
    if headers.get("task") != TASK_RUN_JOB:
        return set()
    try:
        body = json.loads(base64.b64decode(message.get("body", "")))
        args = body[0]
    except (ValueError, TypeError, IndexError, KeyError):
        return set()
    return {args[0]} if args and isinstance(args[0], str) else set()
