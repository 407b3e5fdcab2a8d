"""Rows recorded before endpoints were named by position still hold server URLs: the
events built from them (trace, SSE, dashboard) show none."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from app.api.schemas import JobOut
from core.db.models import Job, Span
from core.events import ModelCallEvent, event_from_span, public_attempts, public_endpoint

URL = "http://10.0.0.7:8001"


def test_a_recorded_url_reads_as_endpoint_and_leaves_errors() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    span = Span(
        id="s1",
        job_id="j1",
        parent_id=None,
        seq=3,
        kind="model_call",
        name="small.generate",
        start_ts=at,
        end_ts=at,
        attributes={
            "role": "small",
            "endpoint": URL,
            "error": f"PoolUnavailable: pool 'small': all 4 attempts failed; last: {URL}/v1: "
            "HTTP 500: boom",
        },
    )
    event = event_from_span(span)
    assert isinstance(event, ModelCallEvent)
    assert event.endpoint == "endpoint" and event.attributes["endpoint"] == "endpoint"
    assert event.error == (
        "PoolUnavailable: pool 'small': all 4 attempts failed; last: <endpoint>: HTTP 500: boom"
    )
    assert "://" not in event.model_dump_json()


def test_labels_pass_through_and_attempts_lose_their_urls() -> None:
    assert public_endpoint("endpoint 2 of 3") == "endpoint 2 of 3"
    assert public_endpoint(None) is None
    attempts = [{"endpoint": URL, "status": 503, "error": f"ConnectError: {URL} refused"}]
    assert public_attempts(attempts) == [
        {"endpoint": "endpoint", "status": 503, "error": "ConnectError: <endpoint> refused"}
    ]


def test_a_job_saved_before_endpoint_labels_shows_its_error_without_the_url() -> None:
    job = Job(
        id="j1",
        tenant="t",
        status="failed",
        question="What is 2 + 3?",
        strategy={"kind": "direct"},
        attempts=1,
        seed=0,
        created_at=datetime.now(UTC),
        error={
            "code": "pool_unavailable",
            "message": "all 4 attempts failed; last: http://10.0.0.7:8000/v1: HTTP 500",
        },
    )
    shown = JobOut.of(job).error
    assert shown == {
        "code": "pool_unavailable",
        "message": "all 4 attempts failed; last: <endpoint>: HTTP 500",
    }
    assert "10.0.0.7" not in json.dumps(JobOut.of(job).model_dump(mode="json"))
