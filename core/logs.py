"""Logs an operator can search: JSON lines that name the job, tenant, request and trace.

``PONDER_LOG_FORMAT=json`` turns every line of the API, the workers and the reaper into
one JSON object (python-json-logger's formatter, not hand-built strings) with
``time``, ``level``, ``logger``, ``message`` and, where known, ``job_id``, ``tenant``,
``request_id`` and ``trace_id``. Text, the default, stays readable on a terminal and
appends the same ids as ``key=value``.

The ids travel in context variables: the API's request middleware binds
``request_id``, authentication binds ``tenant``, and a worker binds ``job_id`` around the
run of a job. Asyncio tasks copy the context they were created in, so the lines of a
job's concurrent calls carry its id too.

    with bound(job_id="abc"):
        log.info("claimed")        # {"message": "claimed", "job_id": "abc", ...}
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Literal, TextIO

from pydantic_settings import BaseSettings, SettingsConfigDict
from pythonjsonlogger.json import JsonFormatter

IDS = ("job_id", "tenant", "request_id", "trace_id")
_VARS: dict[str, ContextVar[str | None]] = {name: ContextVar(name, default=None) for name in IDS}
# Third-party loggers that install handlers of their own; in JSON mode they go through
# the root handler instead, so no line escapes the format.
_OWN_HANDLERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task")
_TEXT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s%(ids)s"


class LogSettings(BaseSettings):
    """How every Ponder process logs (``PONDER_LOG_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="PONDER_LOG_", extra="ignore", use_attribute_docstrings=True
    )

    format: Literal["text", "json"] = "text"
    """``json``: one JSON object per line with the ids of the job, tenant, request and
    trace where known; ``text``: readable lines with the same ids as ``key=value``."""
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """The lowest level written."""


def current_ids() -> dict[str, str]:
    """The ids bound in this context (only those that are set)."""
    return {name: value for name, var in _VARS.items() if (value := var.get()) is not None}


@contextmanager
def bound(**ids: str | None) -> Iterator[None]:
    """Bind ids (``job_id``, ``tenant``, ``request_id``, ``trace_id``) for the block.

    Raises:
        TypeError: an unknown id name.
    """
    unknown = set(ids) - set(IDS)
    if unknown:
        raise TypeError(f"unknown log ids: {sorted(unknown)}")
    ids = _with_trace(ids)
    tokens = [(_VARS[name], _VARS[name].set(value)) for name, value in ids.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def bind(**ids: str | None) -> None:
    """Bind ids for the rest of the current context (a request, a task): for code that
    cannot wrap what follows in ``bound`` (a FastAPI dependency)."""
    for name, value in _with_trace(ids).items():
        _VARS[name].set(value)


class ContextIds(logging.Filter):
    """Adds the bound ids to every record (only those known: a JSON line holds no nulls),
    and ``ids``: the same as `` key=value`` text for the text format. An id passed in
    ``extra`` wins over the bound one."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in current_ids().items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        if getattr(record, "trace_id", None) is None and getattr(record, "job_id", None):
            record.trace_id = getattr(record, "job_id")  # noqa: B009 - not a LogRecord field
        shown = [(n, getattr(record, n, None)) for n in IDS]
        # In text, a trace id equal to the job id says nothing new (JSON keeps both).
        job = getattr(record, "job_id", None)
        record.ids = "".join(
            f" {k}={v}" for k, v in shown if v is not None and not (k == "trace_id" and v == job)
        )
        return True


def formatter(kind: Literal["text", "json"]) -> logging.Formatter:
    if kind == "text":
        return logging.Formatter(_TEXT)
    return JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        reserved_attrs=[*_RESERVED, "ids"],
        timestamp=False,
    )


def configure_logging(
    settings: LogSettings | None = None, *, stream: TextIO | None = None
) -> LogSettings:
    """Send every logger through one handler on the root logger, in the chosen format.

    Idempotent: calling it again replaces the handler it installed before. Returns the
    settings used.
    """
    chosen = settings or LogSettings()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_ponder", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._ponder = True  # type: ignore[attr-defined]
    handler.addFilter(ContextIds())
    handler.setFormatter(formatter(chosen.format))
    root.addHandler(handler)
    root.setLevel(chosen.level)
    # httpx logs every request at INFO: a line per model call would drown the job lines.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Celery's "Task ... received" and "Task ... succeeded in" lines repeat the worker's
    # own "job <id> <status> in <s>" line (workers.tasks), twice per job, and cost a
    # formatted write each on the hot path; its warnings and errors still show.
    logging.getLogger("celery.worker.strategy").setLevel(logging.WARNING)
    logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
    if chosen.format == "json":
        for name in _OWN_HANDLERS:
            logger = logging.getLogger(name)
            logger.handlers.clear()
            logger.propagate = True
    return chosen


# The LogRecord attributes python-json-logger leaves out of the JSON by default, minus
# the ids (which it would otherwise drop as reserved when unset).
_RESERVED = [
    "args", "created", "exc_info", "exc_text", "filename", "funcName", "levelno",
    "lineno", "module", "msecs", "msg", "pathname", "process", "processName",
    "relativeCreated", "stack_info", "thread", "threadName", "taskName",
]  # fmt: skip


def _with_trace(ids: dict[str, str | None]) -> dict[str, str | None]:
    """A job's OpenTelemetry trace id is its job id (``core.telemetry``): lines about a
    job carry it, so a log search and a trace search meet."""
    if ids.get("job_id") and "trace_id" not in ids:
        return {**ids, "trace_id": ids["job_id"]}
    return ids
