"""The bridge: trace writes as they are submitted -> finished OTel spans -> a batch queue.

``TraceExport.observe`` is installed as ``core.trace.TraceWriter.observer`` and sees every
span a job writes, on the job's event loop, at the moment it is submitted. It must never
block and never raise into the job: it converts a span once it has ended (a span row
that arrives open is kept until its close arrives) and hands it to a
``BatchSpanProcessor``, whose own thread encodes and sends batches. A collector that is
slow or gone costs the job nothing: the processor's queue is bounded
(``OTEL_BSP_MAX_QUEUE_SIZE``, 2048) and drops the oldest span when full, counted in
``stats()["dropped"]``; each export gives up after ``timeout_s``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanContext

from core.db.models import ModelCall, Span
from core.telemetry import spans as s

log = logging.getLogger(__name__)

MAX_OPEN = 10_000
"""Open spans remembered at most: a run that dies mid-job never closes its spans."""
MAX_PARENTS = 4096


class CountingExporter(SpanExporter):
    """Wraps the real exporter to count what was sent and what failed."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.exported = 0
        self.failed = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception:  # an exporter bug must not kill the processor's thread
            log.exception("OTLP export failed")
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self.exported += len(spans)
        else:
            self.failed += len(spans)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)


class CountingProcessor(BatchSpanProcessor):
    """``BatchSpanProcessor`` with a count of the spans its full queue dropped."""

    def __init__(self, exporter: SpanExporter, **options: Any) -> None:
        super().__init__(exporter, **options)
        self.dropped = 0
        batch = getattr(self, "_batch_processor", None)
        self._queue: Any = getattr(batch, "_queue", None)
        self._capacity: int = getattr(batch, "_max_queue_size", 0)

    def on_end(self, span: ReadableSpan) -> None:
        if self._queue is not None and len(self._queue) >= self._capacity:
            self.dropped += 1  # the deque drops its oldest span to take this one
        super().on_end(span)

    @property
    def queued(self) -> int:
        return len(self._queue) if self._queue is not None else 0


@dataclass(slots=True)
class _Open:
    job_id: str
    parent: SpanContext | None
    kind: str
    name: str
    start_ns: int
    strategy: str | None
    events: list[Event] = field(default_factory=list)


class TraceExport:
    """Turns one process's job traces into OTel spans and queues them for export.

    Args:
        exporter: where batches go (``OTLPSpanExporter`` in production; an in-memory one
            in tests).
        resource: the process's resource (``service.name`` ...).
        processor_options: ``BatchSpanProcessor`` arguments; unset ones come from the
            ``OTEL_BSP_*`` variables.
    """

    def __init__(
        self, exporter: SpanExporter, resource: Resource, **processor_options: Any
    ) -> None:
        self.resource = resource
        self.exporter = CountingExporter(exporter)
        self.processor = CountingProcessor(self.exporter, **processor_options)
        self._open: OrderedDict[str, _Open] = OrderedDict()
        self._parents: OrderedDict[str, SpanContext] = OrderedDict()
        self._lock = threading.Lock()

    # -- parents: the span a job's root hangs under (the API request that created it)

    def remember_parent(self, job_id: str, parent: SpanContext) -> None:
        """The span a job's ``job`` spans are children of, in this process: set by the
        API for the jobs a request created, and by a worker from the task's headers."""
        with self._lock:
            self._parents[job_id] = parent
            self._parents.move_to_end(job_id)
            while len(self._parents) > MAX_PARENTS:
                self._parents.popitem(last=False)

    def parent_of(self, job_id: str) -> SpanContext | None:
        with self._lock:
            return self._parents.get(job_id)

    # -- the observer

    def observe(
        self, rows: list[Span | ModelCall], updates: list[tuple[str, dict[str, Any]]]
    ) -> None:
        """See a trace write (``TraceWriter.submit``); never raises."""
        try:
            self._observe(rows, updates)
        except Exception:  # export is best effort: the job's own trace is in SQL
            log.exception("OpenTelemetry export: a span could not be converted")

    def _observe(
        self, rows: list[Span | ModelCall], updates: list[tuple[str, dict[str, Any]]]
    ) -> None:
        calls = [row for row in rows if isinstance(row, ModelCall)]
        for row in rows:
            if not isinstance(row, Span):
                continue
            if row.kind == "event":
                self._event(row)
            elif row.end_ts is None:
                self._opened(row)
            else:
                entry = calls[0] if row.kind == "model_call" and len(calls) == 1 else None
                self._finished(row, entry)
        for span_id, values in updates:
            if values.get("end_ts") is not None:
                self._closed(span_id, values)

    def _opened(self, row: Span) -> None:
        parent = self._open.get(row.parent_id) if row.parent_id else None
        strategy = row.name if row.kind == "strategy" else parent.strategy if parent else None
        entry = _Open(
            row.job_id,
            self._parent_context(row),
            row.kind,
            row.name,
            s.ns(row.start_ts),
            strategy,
        )
        with self._lock:
            self._open[row.id] = entry
            while len(self._open) > MAX_OPEN:
                self._open.popitem(last=False)

    def _parent_context(self, row: Span) -> SpanContext | None:
        if row.parent_id:
            return s.context_of(row.job_id, s.span_id_of(row.parent_id))
        return self.parent_of(row.job_id)

    def _event(self, row: Span) -> None:
        parent = self._open.get(row.parent_id) if row.parent_id else None
        attributes = s.ponder_attributes(row.attributes or {})
        if parent is not None:
            parent.events.append(Event(row.name, attributes, s.ns(row.start_ts)))
        else:  # no open span to hang it on: a zero-length span of its own
            self._finished(row, None)

    def _closed(self, span_id: str, values: dict[str, Any]) -> None:
        with self._lock:
            entry = self._open.pop(span_id, None)
        if entry is None:
            return
        attributes: dict[str, Any] = values.get("attributes") or {}
        converted = s.ponder_attributes(attributes)
        converted.update(self._common(entry.job_id, span_id, entry.kind, entry.strategy))
        if entry.kind == "strategy":
            converted["input.value"] = s.value(attributes.get("params", {}))
            if "answer" in attributes:
                converted["output.value"] = str(s.value(attributes["answer"]))
        self._tokens(
            converted, values.get("prompt_tokens") or 0, values.get("completion_tokens") or 0
        )
        self.processor.on_end(
            s.readable(
                name=entry.name,
                context=s.context_of(entry.job_id, s.span_id_of(span_id)),
                parent=entry.parent,
                resource=self.resource,
                attributes=converted,
                start_ns=entry.start_ns,
                end_ns=s.ns(values["end_ts"]),
                status=s.status_of(attributes),
                events=entry.events,
            )
        )

    def _finished(self, row: Span, entry: ModelCall | None) -> None:
        """A span submitted already closed: a model or tool call, or a lone event."""
        parent = self._open.get(row.parent_id) if row.parent_id else None
        strategy = parent.strategy if parent else None
        attributes = row.attributes or {}
        converted = s.ponder_attributes(attributes)
        converted.update(self._common(row.job_id, row.id, row.kind, strategy))
        prompt, completion = row.prompt_tokens or 0, row.completion_tokens or 0
        if row.kind == "model_call":
            converted.update(
                s.model_call_attributes(
                    attributes,
                    prompt,
                    completion,
                    row.cost or 0.0,
                    entry.request if entry is not None else None,
                    entry.response if entry is not None else None,
                )
            )
        elif row.kind == "tool_call":
            converted.update(s.tool_call_attributes(attributes))
        else:
            self._tokens(converted, prompt, completion)
        assert row.end_ts is not None
        self.processor.on_end(
            s.readable(
                name=row.name,
                context=s.context_of(row.job_id, s.span_id_of(row.id)),
                parent=self._parent_context(row),
                resource=self.resource,
                attributes=converted,
                start_ns=s.ns(row.start_ts),
                end_ns=s.ns(row.end_ts),
                status=s.status_of(attributes),
            )
        )

    @staticmethod
    def _common(job_id: str, span_id: str, kind: str, strategy: str | None) -> s.Attrs:
        out: s.Attrs = {
            "ponder.job_id": job_id,
            "ponder.span_id": span_id,
            "ponder.kind": kind,
            "openinference.span.kind": s.OPENINFERENCE_KIND.get(kind, "CHAIN"),
        }
        if strategy is not None:
            out["ponder.strategy"] = strategy
        return out

    @staticmethod
    def _tokens(out: s.Attrs, prompt: int, completion: int) -> None:
        if prompt or completion:
            out["ponder.prompt_tokens"] = prompt
            out["ponder.completion_tokens"] = completion

    # -- the API's own span

    def request_finished(
        self,
        span_id: int,
        start_ns: int,
        job_ids: Sequence[str],
        name: str,
        attributes: Mapping[str, str | int],
        *,
        error: bool,
        link: SpanContext | None,
    ) -> None:
        """Export a served request's span into the trace of each job it created: the
        parent of that job's ``job`` spans."""
        from opentelemetry.trace import Link, SpanKind, Status, StatusCode

        end_ns = time.time_ns()
        status = Status(StatusCode.ERROR) if error else Status(StatusCode.UNSET)
        for job_id in job_ids:
            self.processor.on_end(
                s.readable(
                    name=name,
                    context=s.context_of(job_id, span_id),
                    parent=None,
                    resource=self.resource,
                    attributes={
                        **attributes,
                        "ponder.job_id": job_id,
                        "openinference.span.kind": "CHAIN",
                    },
                    start_ns=start_ns,
                    end_ns=end_ns,
                    status=status,
                    links=[Link(link)] if link is not None else (),
                    kind=SpanKind.SERVER,
                )
            )

    # -- lifecycle

    def stats(self) -> dict[str, int]:
        """Spans exported, failed (the collector refused or was unreachable), dropped
        (the queue was full) and queued now."""
        return {
            "exported": self.exporter.exported,
            "failed": self.exporter.failed,
            "dropped": self.processor.dropped,
            "queued": self.processor.queued,
        }

    def flush(self, timeout_s: float = 5.0) -> bool:
        return self.processor.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        self.processor.shutdown()  # type: ignore[no-untyped-call]
