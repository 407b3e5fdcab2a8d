"""OpenTelemetry export without a receiver process: what the spans say, how the
``OTEL_*`` variables are read, and that a dead collector costs a job nothing.

Jobs run through the real runner on the simulator (SQLite and PostgreSQL in turn); the
spans are caught by the SDK's in-memory exporter, or sent to a port where nothing
listens. ``test_otel_phoenix.py`` checks the same trace arriving in a real Phoenix.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from core import telemetry
from core.db import repo
from core.jobs import create_replay, submit_job
from core.runtime import Runtime
from core.simulator.config import Rule, SimulatorConfig
from core.simulator.server import Simulator
from core.telemetry import TelemetryConfigError, config_from_env

QUESTION = "What is 2 + 3?"
SC = {"kind": "self_consistency", "n": 4, "adaptive": True, "batch_size": 2}


@pytest.fixture
def memory() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    telemetry.setup("ponder-test", exporter=exporter, schedule_delay_millis=10)
    try:
        yield exporter
    finally:
        telemetry.shutdown()


def _script() -> SimulatorConfig:
    return SimulatorConfig(
        models=["sim-small", "sim-large"],
        rules=[Rule(replies=["2 + 3 = 5. The answer is 5.", "The answer is 5."])],
    )


def _finished() -> list[ReadableSpan]:
    export = telemetry.active()
    assert export is not None
    assert export.flush()
    exporter = export.exporter.inner
    assert isinstance(exporter, InMemorySpanExporter)
    return list(exporter.get_finished_spans())


async def test_a_job_exports_its_tree_with_ponder_ids_and_times(
    runtime: Runtime, simulator: Simulator, memory: InMemorySpanExporter
) -> None:
    simulator.set_config(_script())
    job_id = await submit_job(runtime.sessions, runtime.pools, question=QUESTION, strategy=SC)
    outcome = await runtime.runner.run(job_id)
    assert outcome.status == "succeeded"
    spans = _finished()
    async with runtime.sessions() as session:
        rows = {row.id: row for row in await repo.list_spans(session, job_id)}
    # Every Ponder span but the events is an OTel span with the same id, parent and times.
    assert {s.attributes["ponder.span_id"] for s in spans if s.attributes} == {
        row.id for row in rows.values() if row.kind != "event"
    }
    for span in spans:
        assert span.context is not None and span.attributes is not None
        row = rows[str(span.attributes["ponder.span_id"])]
        assert span.context.trace_id == int(job_id, 16)
        assert span.context.span_id == int(row.id[:16], 16)
        assert (span.parent.span_id if span.parent else None) == (
            int(row.parent_id[:16], 16) if row.parent_id else None
        )
        assert span.name == row.name and span.kind is SpanKind.INTERNAL
        assert span.status.status_code is StatusCode.UNSET
    named = {s.name: s for s in spans}
    assert named["job"].parent is None  # no API request created it here
    strategy = named["self_consistency"]
    assert strategy.attributes is not None
    assert strategy.attributes["openinference.span.kind"] == "CHAIN"
    assert strategy.attributes["output.value"] == "5"
    # Decisions are events on the span that made them, with their attributes.
    events = {e.name: e for e in strategy.events}
    assert "vote" in events and events["vote"].attributes
    calls = [s for s in spans if s.attributes and s.attributes["ponder.kind"] == "model_call"]
    assert outcome.usage is not None and len(calls) == outcome.usage["calls"]
    for call in calls:
        a = call.attributes
        assert a is not None
        assert a["openinference.span.kind"] == "LLM" and a["ponder.strategy"] == "self_consistency"
        assert a["gen_ai.request.model"] == "sim-small" and a["ponder.journal"] == "miss"
        assert a["llm.input_messages.1.message.content"] == QUESTION
        assert a["gen_ai.request.choice.count"] == 2
        assert "The answer is 5." in str(a["llm.output_messages.0.message.content"])
    tokens = [c.attributes["gen_ai.usage.output_tokens"] for c in calls if c.attributes]
    assert sum(n for n in tokens if isinstance(n, int)) == outcome.usage["completion_tokens"]


async def test_a_replay_exports_journal_hits_without_copying_messages(
    runtime: Runtime, simulator: Simulator, memory: InMemorySpanExporter
) -> None:
    simulator.set_config(_script())
    parent = await submit_job(runtime.sessions, runtime.pools, question=QUESTION, strategy=SC)
    await runtime.runner.run(parent)
    child = await create_replay(runtime.sessions, runtime.pools, parent, mode="strict")
    outcome = await runtime.runner.run(child)
    assert outcome.status == "succeeded"
    calls = [
        s
        for s in _finished()
        if s.attributes
        and s.attributes["ponder.job_id"] == child
        and s.attributes["ponder.kind"] == "model_call"
    ]
    assert calls and all(c.attributes and c.attributes["ponder.journal"] == "hit" for c in calls)
    assert all(c.attributes and "input.value" not in c.attributes for c in calls)
    totals = [c.attributes["llm.token_count.total"] for c in calls if c.attributes]
    assert len(totals) == len(calls) and all(isinstance(n, int) and n > 0 for n in totals)


async def test_an_unreachable_collector_fails_exports_not_jobs(
    runtime: Runtime, simulator: Simulator
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # never listening: connections are refused
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/v1/traces"
        export = telemetry.setup(
            "ponder-test",
            exporter=OTLPSpanExporter(endpoint=url, timeout=0.5),
            schedule_delay_millis=10,
        )
        assert export is not None
        try:
            simulator.set_config(_script())
            for _ in range(3):
                job_id = await submit_job(
                    runtime.sessions, runtime.pools, question=QUESTION, strategy=SC
                )
                assert (await runtime.runner.run(job_id)).status == "succeeded"
            export.flush(timeout_s=3)
            stats = export.stats()
        finally:
            telemetry.shutdown()
    assert stats["exported"] == 0 and stats["failed"] > 0


def test_export_is_off_unless_an_endpoint_is_set() -> None:
    assert config_from_env("ponder-api", {}) is None
    on = config_from_env("ponder-api", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert on is not None and on.service == "ponder-api" and on.protocol == "http/protobuf"
    assert on.timeout_s == telemetry.DEFAULT_TIMEOUT_S
    traces = config_from_env(
        "ponder-worker",
        {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces",
            "OTEL_SERVICE_NAME": "ops-ponder",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "5000",
        },
    )
    assert traces is not None and traces.service == "ops-ponder" and traces.timeout_s is None
    for off in ({"OTEL_SDK_DISABLED": "true"}, {"OTEL_TRACES_EXPORTER": "none"}):
        assert config_from_env("ponder-api", {"OTEL_EXPORTER_OTLP_ENDPOINT": "x", **off}) is None


def test_an_unknown_protocol_is_refused_by_name() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
    }
    with pytest.raises(TelemetryConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL='http/json'"):
        config_from_env("ponder-api", env)


def test_traceparent_round_trip_and_rejects() -> None:
    header = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    parsed = telemetry.parse_traceparent(header)
    assert parsed is not None and parsed.is_remote
    assert telemetry.format_traceparent(parsed) == header
    for bad in (None, "", "garbage", "00-" + "0" * 32 + "-b7ad6b7169203331-01", header[:-3]):
        assert telemetry.parse_traceparent(bad) is None


async def test_a_request_notes_the_jobs_it_creates(
    runtime: Runtime, memory: InMemorySpanExporter
) -> None:
    """The API's request span (``app.api.telemetry``) becomes the parent of the jobs its
    request inserts: ``create_job`` tells the export about each one as it is written."""
    with telemetry.request_span(None) as span:
        assert span is not None
        job_id = await submit_job(
            runtime.sessions, runtime.pools, question=QUESTION, strategy={"kind": "direct"}
        )
    assert span.job_ids == [job_id]
    export = telemetry.active()
    assert export is not None and export.parent_of(job_id) is not None
    # Outside a request, nothing is noted.
    other = await submit_job(
        runtime.sessions, runtime.pools, question=QUESTION, strategy={"kind": "direct"}
    )
    assert export.parent_of(other) is None
