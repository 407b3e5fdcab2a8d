"""The client's parts that need no server: the SSE decoder, the error body reader, and
the reconnection policy, driven through httpx's ``MockTransport``. The whole client
against a real server: ``tests/integration/test_client.py``."""

from __future__ import annotations

import httpx
import pytest

from ponder_client import AsyncPonderClient, PonderAPIError, PonderClient
from ponder_client._sse import Decoder, Message, Resumption


def decode(text: str) -> list[Message]:
    decoder = Decoder()
    return [m for line in text.split("\n") if (m := decoder.feed(line)) is not None]


def test_the_decoder_reads_what_the_api_sends_and_what_sse_allows() -> None:
    messages = decode(
        'event: job\ndata: {"a": 1}\nid: 3\nretry: 1000\n\n'
        ": ping\n\n"  # a keep-alive comment: no message
        "data: line one\ndata:line two\n\n"  # no event name, no id: the id persists
        "event: lonely\n\n"  # no data: no message
    )
    assert messages == [
        Message("job", '{"a": 1}', "3", 1000),
        Message("", "line one\nline two", "3", None),
    ]


def test_the_error_body_gives_status_code_field_and_request_id() -> None:
    body = {"error": {"code": "invalid_input", "message": "strategy.n: too small",
                      "field": "strategy.n", "request_id": "r-1", "errors": []}}  # fmt: skip
    error = PonderAPIError.from_response(httpx.Response(422, json=body))
    assert (error.status, error.code, error.field, error.request_id) == (
        422, "invalid_input", "strategy.n", "r-1",
    )  # fmt: skip
    assert (
        error.body["errors"] == [] and str(error) == "HTTP 422 invalid_input: strategy.n: too small"
    )
    # Not Ponder's body (a proxy's page): the status and the text still say what happened.
    page = httpx.Response(
        502, text="<html>Bad Gateway</html>", headers={"X-Request-ID": "r-2", "Retry-After": "3"}
    )
    error = PonderAPIError.from_response(page)
    assert (error.code, error.message, error.field) == (
        "http_error",
        "<html>Bad Gateway</html>",
        None,
    )
    assert (error.request_id, error.retry_after) == ("r-2", 3.0)


def test_a_restart_lets_the_rebuilt_spans_through_again() -> None:
    state = Resumption()
    span = '{"type": "model_call", "job_id": "j", "span_id": "s1", "seq": 1,' \
           ' "ts": "2026-01-01T00:00:00Z", "name": "small.generate",' \
           ' "end_ts": "2026-01-01T00:00:01Z"}'  # fmt: skip
    restarted = '{"type": "job_restarted", "job_id": "j", "seq": 1,' \
                ' "ts": "2026-01-01T00:00:02Z", "attempt": 2}'  # fmt: skip
    assert state.accept(Message("model_call", span, "1", None)) is not None
    assert state.accept(Message("model_call", span, "1", None)) is None  # a repeat
    assert state.accept(Message("job_restarted", restarted, "1", None)) is not None
    assert state.accept(Message("model_call", span, "1", None)) is not None
    assert state.headers() == {"Last-Event-ID": "1"}


def answering(status: int, seen: list[httpx.Request]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = {"error": {"code": "x", "message": "m"}}
        return httpx.Response(status, json=body, headers={"Retry-After": "0"})

    return httpx.MockTransport(handle)


@pytest.mark.parametrize(("status", "attempts"), [(503, 3), (429, 3), (404, 1), (401, 1)])
def test_a_stream_retries_overload_and_outages_only(status: int, attempts: int) -> None:
    seen: list[httpx.Request] = []
    http = httpx.Client(transport=answering(status, seen))
    client = PonderClient("http://ponder.test", "k", http_client=http, max_reconnects=2)
    with client, pytest.raises(PonderAPIError) as raised:
        list(client.events("j1"))
    assert raised.value.status == status and len(seen) == attempts
    assert seen[0].headers["Authorization"] == "Bearer k"
    assert seen[0].url == "http://ponder.test/v1/jobs/j1/events"
    assert not http.is_closed  # the caller's client stays the caller's


async def test_the_async_stream_follows_the_same_policy() -> None:
    seen: list[httpx.Request] = []
    http = httpx.AsyncClient(transport=httpx.MockTransport(answering(503, seen).handle_request))
    async with AsyncPonderClient("http://ponder.test", http_client=http, max_reconnects=1) as c:
        with pytest.raises(PonderAPIError):
            [e async for e in c.events("j1")]
    assert len(seen) == 2
    await http.aclose()


def test_submit_sends_only_what_is_set_plus_extra_fields() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(422, json={"error": {"code": "invalid_input", "message": "m"}})

    http = httpx.Client(transport=httpx.MockTransport(handle))
    with (
        PonderClient("http://ponder.test/", http_client=http) as client,
        pytest.raises(PonderAPIError),
    ):
        client.submit("q", seed=0, idempotency_key="k1", answer_kind="json", tools=[])
    (request,) = seen
    assert request.url == "http://ponder.test/v1/jobs"
    assert request.headers["Idempotency-Key"] == "k1"
    assert request.read() == b'{"question":"q","seed":0,"answer_kind":"json","tools":[]}'
