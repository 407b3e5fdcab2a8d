"""OpenTelemetry export of job traces: off unless an OTLP endpoint is configured.

The standard variables turn it on and tune it (``docs/observability.md``):

    OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318    (or ..._TRACES_ENDPOINT, full URL)
    OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf            (default; ``grpc`` needs its package)
    OTEL_SERVICE_NAME                                    (default ponder-api / ponder-worker)
    OTEL_SDK_DISABLED=true, OTEL_TRACES_EXPORTER=none    (off, whatever else is set)
    OTEL_BSP_*                                           (the batch queue: size, delay)

One trace per job. Its trace id is the job id, so the API request that created the job,
every worker run of it and any resume land in one trace with nothing passed along for
the ids. What does travel is the *parent*: the API remembers, per job it created, the
span of the request (``request_span``), uses it directly when it runs the job itself
(the interactive lane, ``in-process``), and ``workers.telemetry`` carries it to a worker
as a ``traceparent`` Celery header. A client's own ``traceparent`` becomes a link on the
request span: its trace id is not the job's.

Nothing here imports OpenTelemetry until export is turned on: it is the ``otel`` extra.

Example:
    >>> export = setup("ponder-worker")      # None when the environment says nothing
    >>> ...                                  # jobs run; their spans are exported
    >>> shutdown()                           # flush what is queued
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.errors import PonderError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import SpanContext

    from core.telemetry.export import TraceExport

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 2.0
"""Per export request, unless ``OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT`` says otherwise: the
SDK's 10 s would let a black-holed collector hold the export thread that long."""
PROJECT = "ponder"
"""Phoenix files spans by ``openinference.project.name``; the API's and the workers' meet
in one project (override it in ``OTEL_RESOURCE_ATTRIBUTES``)."""


class TelemetryConfigError(PonderError):
    code = "invalid_configuration"
    status = 500


@dataclass(frozen=True)
class OtelConfig:
    service: str
    protocol: str
    timeout_s: float | None
    """None: the exporter reads ``OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT`` itself."""


def config_from_env(service: str, environ: Mapping[str, str] | None = None) -> OtelConfig | None:
    """What the ``OTEL_*`` variables ask of this process; None when export is off.

    Raises:
        TelemetryConfigError: a protocol other than ``http/protobuf`` or ``grpc``.
    """
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return None
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not (endpoint or "").strip():
        return None
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol not in ("http/protobuf", "grpc"):
        raise TelemetryConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported; use http/protobuf or grpc",
            field="OTEL_EXPORTER_OTLP_PROTOCOL",
        )
    timed = env.get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") or env.get("OTEL_EXPORTER_OTLP_TIMEOUT")
    return OtelConfig(
        service=env.get("OTEL_SERVICE_NAME") or service,
        protocol=protocol,
        timeout_s=None if timed else DEFAULT_TIMEOUT_S,
    )


_active: TraceExport | None = None


def active() -> TraceExport | None:
    """The export this process runs, if any."""
    return _active


def setup(
    service: str,
    *,
    environ: Mapping[str, str] | None = None,
    exporter: SpanExporter | None = None,
    **processor_options: Any,
) -> TraceExport | None:
    """Start exporting this process's job traces if the environment asks; idempotent.

    Args:
        service: ``service.name`` unless ``OTEL_SERVICE_NAME`` is set.
        environ: the variables to read (default ``os.environ``).
        exporter: export here instead (tests, the bench); turns export on regardless
            of the environment.
        processor_options: ``BatchSpanProcessor`` arguments (default: ``OTEL_BSP_*``).

    Raises:
        TelemetryConfigError: export asked for, but the ``otel`` extra is missing or
            the protocol is unknown.
    """
    global _active
    if _active is not None:
        return _active
    config = config_from_env(service, environ)
    if config is None and exporter is None:
        return None
    try:
        from opentelemetry.sdk.resources import Resource

        from core.db import repo
        from core.telemetry.export import TraceExport
        from core.trace import TraceWriter
    except ImportError as exc:
        raise TelemetryConfigError(
            f"OTEL_EXPORTER_OTLP_ENDPOINT is set, but OpenTelemetry is not installed "
            f"({exc.name}); install ponder[otel]",
            field="OTEL_EXPORTER_OTLP_ENDPOINT",
        ) from exc
    if exporter is None:
        assert config is not None
        exporter = _otlp_exporter(config)
    name = config.service if config is not None else service
    resource = Resource.create(_resource_attributes(name, environ))
    export = TraceExport(exporter, resource, **processor_options)
    TraceWriter.observer = export.observe
    if _job_inserted not in repo.job_created_hooks:
        repo.job_created_hooks.append(_job_inserted)
    _active = export
    log.info("OpenTelemetry: exporting job traces as service %r", name)
    return export


def shutdown() -> None:
    """Flush what is queued (bounded by the export timeout) and stop exporting."""
    global _active
    export, _active = _active, None
    if export is None:
        return
    from core.db import repo
    from core.trace import TraceWriter

    TraceWriter.observer = None
    if _job_inserted in repo.job_created_hooks:
        repo.job_created_hooks.remove(_job_inserted)
    export.shutdown()


@contextmanager
def session(service: str) -> Iterator[TraceExport | None]:
    """``setup`` for the block; shuts down on exit only what it started itself (an app
    built twice in one process, as tests do, shares the first one's export)."""
    started = _active is None
    export = setup(service)
    try:
        yield export
    finally:
        if started and export is not None:
            shutdown()


def _resource_attributes(service: str, environ: Mapping[str, str] | None) -> dict[str, str]:
    env = os.environ if environ is None else environ
    attributes = {"service.name": service}
    if "openinference.project.name" not in env.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        attributes["openinference.project.name"] = PROJECT
    return attributes


def _otlp_exporter(config: OtelConfig) -> SpanExporter:
    try:
        if config.protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )

            grpc: SpanExporter = GrpcExporter(timeout=config.timeout_s)
            return grpc
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        package = f"opentelemetry-exporter-otlp-proto-{config.protocol.split('/')[0]}"
        raise TelemetryConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={config.protocol} needs {package}, which is not "
            "installed",
            field="OTEL_EXPORTER_OTLP_PROTOCOL",
        ) from exc
    return OTLPSpanExporter(timeout=config.timeout_s)


# -- the API's request span ---------------------------------------------------------

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


@dataclass
class RequestSpan:
    """An API request being served; ``job_ids``: the jobs it created (filled as their
    rows are inserted), each of whose traces gets a span for this request."""

    span_id: int
    start_ns: int
    link: SpanContext | None
    job_ids: list[str] = field(default_factory=list)


_request: ContextVar[RequestSpan | None] = ContextVar("ponder_otel_request", default=None)


@contextmanager
def request_span(traceparent: str | None) -> Iterator[RequestSpan | None]:
    """Mark the block as serving one request: jobs inserted in it hang under its span.
    None (and no cost) when export is off."""
    if _active is None:
        yield None
        return
    span = RequestSpan(secrets.randbits(64) or 1, time.time_ns(), parse_traceparent(traceparent))
    token = _request.set(span)
    try:
        yield span
    finally:
        _request.reset(token)


def _job_inserted(job: Any) -> None:
    # A ``repo.create_job`` hook: runs right after the INSERT, in the request's context
    # (SQLAlchemy's greenlets carry the caller's context variables). Cheap, never raises.
    span, export = _request.get(), _active
    if span is None or export is None:
        return
    try:
        from core.telemetry.spans import context_of

        span.job_ids.append(job.id)
        export.remember_parent(job.id, context_of(job.id, span.span_id))
    except Exception:
        log.exception("OpenTelemetry: could not note job %s", getattr(job, "id", "?"))


def parse_traceparent(header: str | None) -> SpanContext | None:
    """A W3C ``traceparent`` header as a remote span context; None if absent or invalid."""
    match = _TRACEPARENT.fullmatch((header or "").strip().lower())
    if match is None:
        return None
    trace_id, span_id = int(match[1], 16), int(match[2], 16)
    if not trace_id or not span_id:
        return None
    from opentelemetry.trace import SpanContext, TraceFlags

    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(int(match[3], 16)))


def format_traceparent(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
