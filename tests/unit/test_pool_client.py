"""PoolClient: balancing, retries, breaker, fan-out, deadline and cancellation.

Most tests script the servers with ``httpx.MockTransport`` and inject a fake clock
and sleep, so backoff and breaker timing are exact and instant. The last ones run
against the scripted simulator over real HTTP.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Literal

import httpx
import pytest

from core.errors import ModelError, ModelHTTPError, ModelTimeout, PoolUnavailable
from core.pools import PoolClient, Pools
from core.settings import PoolSettings
from core.simulator.config import Failure, SimulatorConfig
from core.simulator.server import Simulator
from strategies.protocol import ModelRequest

A, B = "http://a:8000", "http://b:8000"
CHAT = [{"role": "user", "content": "What is 2+2?"}]

Script = Callable[[httpx.Request, dict[str, Any]], Awaitable[httpx.Response | None]]


class FakeTime:
    """A clock that only moves when the client sleeps (or a test says so)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Servers:
    """MockTransport handler: runs ``script`` (if any) and otherwise answers ok.

    The ok answer is a completion whose texts name the endpoint, seed and choice,
    so tests can see where each choice came from.
    """

    def __init__(self, script: Script | None = None) -> None:
        self.script = script
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.headers: list[httpx.Headers] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        host = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        self.seen.append((host + request.url.path, body))
        self.headers.append(request.headers)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.script is not None:
                response = await self.script(request, body)
                if response is not None:
                    return response
            return ok(host, body)
        finally:
            self.in_flight -= 1

    @property
    def hosts(self) -> list[str]:
        return [url.rsplit("/v1/", 1)[0] for url, _ in self.seen]


def ok(host: str, body: dict[str, Any]) -> httpx.Response:
    n = body.get("n", 1)
    seed = body.get("seed")
    texts = [f"{host} seed={seed} i={i}" for i in range(n)]
    if "messages" in body:
        choices: list[dict[str, Any]] = [
            {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
            for i, t in enumerate(texts)
        ]
    else:
        choices = [{"index": i, "text": t, "finish_reason": "stop"} for i, t in enumerate(texts)]
    usage = {"prompt_tokens": 5, "completion_tokens": 2 * n}
    return httpx.Response(
        200, json={"model": body.get("model"), "choices": choices, "usage": usage}
    )


def error(status: int, message: str = "boom", **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"message": message}}, headers=headers)


def settings(endpoints: list[str] | None = None, **overrides: Any) -> PoolSettings:
    values: dict[str, Any] = {
        "endpoints": endpoints or [A, B],
        "model": "m",
        "kind": "vllm",
        "backoff_base_s": 0.1,
        "backoff_max_s": 1.0,
    }
    return PoolSettings(**(values | overrides))


Factory = Callable[..., PoolClient]


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


@pytest.fixture
async def make(fake: FakeTime) -> AsyncIterator[Factory]:
    clients: list[httpx.AsyncClient] = []

    def factory(servers: Servers, pool: PoolSettings | None = None) -> PoolClient:
        http = httpx.AsyncClient(transport=httpx.MockTransport(servers))
        clients.append(http)
        return PoolClient(
            "small",
            pool or settings(),
            http,
            sleep=fake.sleep,
            rng=random.Random(0),
            clock=fake.clock,
        )

    yield factory
    for http in clients:
        await http.aclose()


# -- wire and result ------------------------------------------------------------


async def test_chat_request_reaches_chat_endpoint_with_key(make: Factory) -> None:
    servers = Servers()
    pool = make(servers, settings([A], api_key="sekrit"))
    result = await pool.generate(ModelRequest(messages=CHAT, max_tokens=7))
    assert servers.seen == [(f"{A}/v1/chat/completions", {
        "model": "m", "messages": CHAT, "n": 1, "max_tokens": 7
    })]  # fmt: skip
    assert servers.headers[0]["authorization"] == "Bearer sekrit"
    assert result.model == "m"
    assert [c.text for c in result.choices] == [f"{A} seed=None i=0"]
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (5, 2)
    assert result.endpoint == A
    assert not result.emulated_n
    assert [(a.endpoint, a.status, a.error) for a in result.attempts] == [(A, 200, None)]
    assert result.latency_ms >= result.attempts[0].latency_ms > 0


async def test_prompt_request_uses_completions(make: Factory) -> None:
    servers = Servers()
    result = await make(servers).generate(ModelRequest(prompt="2+2=", n=3))
    assert servers.seen[0][0].endswith("/v1/completions")
    assert [c.index for c in result.choices] == [0, 1, 2]
    assert len(servers.seen) == 1  # vLLM samples n natively


# -- balancing ----------------------------------------------------------------------


async def test_ties_rotate_between_endpoints(make: Factory) -> None:
    servers = Servers()
    pool = make(servers)
    for _ in range(4):
        await pool.generate(ModelRequest(prompt="x"))
    assert servers.hosts == [A, B, A, B]
    assert [s.total_requests for s in pool.snapshot()] == [2, 2]


async def test_least_outstanding_endpoint_is_chosen(make: Factory) -> None:
    release = asyncio.Event()

    async def slow_a(request: httpx.Request, body: dict[str, Any]) -> None:
        if request.url.host == "a" and body["prompt"] == "slow":
            await release.wait()

    servers = Servers(slow_a)
    pool = make(servers)
    slow = asyncio.create_task(pool.generate(ModelRequest(prompt="slow")))
    await asyncio.sleep(0)
    while servers.in_flight == 0:
        await asyncio.sleep(0)
    assert [s.outstanding for s in pool.snapshot()] == [1, 0]
    # A is busy: every further call goes to B, whatever the rotation says.
    for _ in range(3):
        assert (await pool.generate(ModelRequest(prompt="x"))).endpoint == B
    release.set()
    assert (await slow).endpoint == A
    assert [s.outstanding for s in pool.snapshot()] == [0, 0]


async def test_max_concurrency_queues_in_the_client(make: Factory) -> None:
    async def slowly(request: httpx.Request, body: dict[str, Any]) -> None:
        await asyncio.sleep(0.01)

    servers = Servers(slowly)
    pool = make(servers, settings([A], max_concurrency=2))
    results = await asyncio.gather(*(pool.generate(ModelRequest(prompt="x")) for _ in range(6)))
    assert len(results) == 6
    assert servers.max_in_flight == 2


# -- retries --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        error(503),
        error(500),
        error(502),
        error(504),
        httpx.ConnectError("connection refused"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadTimeout("timed out"),
        httpx.Response(200, content=b"<html>not json</html>"),
    ],
    ids=["503", "500", "502", "504", "connect", "disconnect", "read-timeout", "bad-json"],
)
async def test_retryable_fault_fails_over_to_the_other_endpoint(
    make: Factory, fake: FakeTime, fault: httpx.Response | Exception
) -> None:
    async def a_fails(request: httpx.Request, body: dict[str, Any]) -> httpx.Response | None:
        if request.url.host == "a":
            if isinstance(fault, Exception):
                raise fault
            return fault
        return None

    servers = Servers(a_fails)
    result = await make(servers).generate(ModelRequest(prompt="x"))
    assert servers.hosts == [A, B]
    assert result.endpoint == B
    assert [a.endpoint for a in result.attempts] == [A, B]
    assert result.attempts[0].error is not None
    assert result.attempts[1].error is None
    assert len(fake.sleeps) == 1
    assert 0 <= fake.sleeps[0] <= 0.1  # full jitter of backoff_base_s * 2**0


async def test_backoff_grows_exponentially_with_full_jitter_and_cap(
    make: Factory, fake: FakeTime
) -> None:
    async def always_503(request: httpx.Request, body: dict[str, Any]) -> httpx.Response:
        return error(503, "overloaded")

    pool = make(Servers(always_503), settings(max_attempts=6, breaker_failures=100))
    with pytest.raises(PoolUnavailable) as caught:
        await pool.generate(ModelRequest(prompt="x"))
    caps = [0.1, 0.2, 0.4, 0.8, 1.0]
    assert len(fake.sleeps) == 5
    assert all(0 <= s <= cap for s, cap in zip(fake.sleeps, caps, strict=True))
    assert len(set(fake.sleeps)) == 5  # jittered, not fixed
    err = caught.value
    assert "all 6 attempts failed" in err.message
    assert "HTTP 503: overloaded" in err.message
    assert err.details["pool"] == "small"
    assert [a["endpoint"] for a in err.details["attempts"]] == [
        "endpoint 1 of 2",
        "endpoint 2 of 2",
    ] * 3
    assert all(a["status"] == 503 for a in err.details["attempts"])


@pytest.mark.parametrize(("status", "header", "slept"), [(429, "2", 2.0), (503, "30", 5.0)])
async def test_retry_after_is_honoured_up_to_the_cap(
    make: Factory, fake: FakeTime, status: int, header: str, slept: float
) -> None:
    async def limited(request: httpx.Request, body: dict[str, Any]) -> httpx.Response | None:
        if len(servers.seen) == 1:
            return error(status, "slow down", **{"Retry-After": header})
        return None

    servers = Servers(limited)
    result = await make(servers, settings(backoff_max_s=5.0)).generate(ModelRequest(prompt="x"))
    assert fake.sleeps == [slept]
    assert [a.status for a in result.attempts] == [status, 200]


@pytest.mark.parametrize("status", [400, 401, 404, 422])
async def test_other_4xx_fails_at_once_with_the_servers_message(
    make: Factory, fake: FakeTime, status: int
) -> None:
    async def reject(request: httpx.Request, body: dict[str, Any]) -> httpx.Response:
        return error(status, "n=32 exceeds the 16 slots")

    servers = Servers(reject)
    pool = make(servers)
    with pytest.raises(ModelHTTPError) as caught:
        await pool.generate(ModelRequest(prompt="x"))
    assert len(servers.seen) == 1
    assert fake.sleeps == []
    assert f"HTTP {status}" in caught.value.message
    assert "n=32 exceeds the 16 slots" in caught.value.message
    assert caught.value.details["upstream_status"] == status
    assert len(caught.value.details["attempts"]) == 1
    # The server answered, so its circuit is not counting a failure.
    assert pool.snapshot()[0].consecutive_failures == 0


# -- circuit breaker --------------------------------------------------------------------


async def test_breaker_opens_then_half_open_probe_closes_it(make: Factory, fake: FakeTime) -> None:
    healthy = False

    async def down(request: httpx.Request, body: dict[str, Any]) -> httpx.Response | None:
        return None if healthy else error(503)

    servers = Servers(down)
    pool = make(servers, settings([A], max_attempts=2, breaker_failures=2, breaker_reset_s=30))
    with pytest.raises(PoolUnavailable):
        await pool.generate(ModelRequest(prompt="x"))
    state = pool.snapshot()[0]
    assert (state.breaker, state.consecutive_failures, state.total_failures) == ("open", 2, 2)

    with pytest.raises(PoolUnavailable) as caught:
        await pool.generate(ModelRequest(prompt="x"))
    assert "circuit open" in caught.value.message and "endpoint 1 of 1" in caught.value.message
    assert A not in caught.value.message  # errors reach tenants: no server URLs
    assert caught.value.details["open_endpoints"] == ["endpoint 1 of 1"]
    assert caught.value.details["attempts"] == []
    assert len(servers.seen) == 2  # refused without a request

    fake.now += 30
    assert pool.snapshot()[0].breaker == "half_open"
    healthy = True
    result = await pool.generate(ModelRequest(prompt="x"))
    assert result.endpoint == A
    state = pool.snapshot()[0]
    assert (state.breaker, state.consecutive_failures) == ("closed", 0)


async def test_failed_probe_reopens_the_circuit(make: Factory, fake: FakeTime) -> None:
    async def down(request: httpx.Request, body: dict[str, Any]) -> httpx.Response:
        raise httpx.ConnectError("refused")

    pool = make(Servers(down), settings([A], max_attempts=1, breaker_failures=1))
    with pytest.raises(PoolUnavailable):
        await pool.generate(ModelRequest(prompt="x"))
    fake.now += 30
    with pytest.raises(PoolUnavailable) as caught:
        await pool.generate(ModelRequest(prompt="x"))
    assert "ConnectError: refused" in caught.value.message
    assert pool.snapshot()[0].breaker == "open"
    fake.now += 29.9
    assert pool.snapshot()[0].breaker == "open"  # reset counts from the failed probe


async def test_half_open_admits_one_probe_at_a_time(make: Factory, fake: FakeTime) -> None:
    release = asyncio.Event()
    broken = True

    async def script(request: httpx.Request, body: dict[str, Any]) -> httpx.Response | None:
        if broken:
            return error(500)
        await release.wait()
        return None

    servers = Servers(script)
    pool = make(servers, settings([A], max_attempts=1, breaker_failures=1))
    with pytest.raises(PoolUnavailable):
        await pool.generate(ModelRequest(prompt="x"))
    fake.now += 30
    broken = False
    probe = asyncio.create_task(pool.generate(ModelRequest(prompt="probe")))
    while servers.in_flight == 0:
        await asyncio.sleep(0)
    with pytest.raises(PoolUnavailable, match="circuit open"):
        await pool.generate(ModelRequest(prompt="x"))
    release.set()
    await probe
    assert pool.snapshot()[0].breaker == "closed"


async def test_open_circuit_shifts_traffic_to_the_healthy_endpoint(make: Factory) -> None:
    async def a_down(request: httpx.Request, body: dict[str, Any]) -> httpx.Response | None:
        return error(502) if request.url.host == "a" else None

    servers = Servers(a_down)
    pool = make(servers, settings(breaker_failures=2))
    for _ in range(6):
        assert (await pool.generate(ModelRequest(prompt="x"))).endpoint == B
    assert servers.hosts.count(A) == 2
    assert [s.breaker for s in pool.snapshot()] == ["open", "closed"]


async def test_one_prompt_that_breaks_the_server_does_not_open_its_circuit(
    make: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    """A 500 that only one request reproduces is that request's fault, not the server's:
    its own retries must not shut the endpoint for an unrelated job."""

    async def poison(request: httpx.Request, body: dict[str, Any]) -> httpx.Response | None:
        return error(500, "template error") if body.get("prompt") == "poison" else None

    servers = Servers(poison)
    pool = make(servers, settings([A], max_attempts=4, breaker_failures=3))
    with pytest.raises(PoolUnavailable, match="all 4 attempts failed"):
        await pool.generate(ModelRequest(prompt="poison"))
    assert pool.snapshot()[0].breaker == "closed"
    assert (await pool.generate(ModelRequest(prompt="unrelated"))).endpoint == A
    assert "circuit opened" not in caplog.text


async def test_answered_faults_from_two_requests_open_the_circuit_with_a_warning(
    make: Factory, fake: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    healthy = False

    async def broken(request: httpx.Request, body: dict[str, Any]) -> httpx.Response | None:
        return None if healthy else error(500, "engine dead")

    pool = make(Servers(broken), settings([A], max_attempts=2, breaker_failures=3))
    with caplog.at_level("WARNING", logger="core.pools.endpoint"):
        with pytest.raises(PoolUnavailable):
            await pool.generate(ModelRequest(prompt="one"))
        assert pool.snapshot()[0].breaker == "closed"  # 2 faults, one request
        with pytest.raises(PoolUnavailable):
            await pool.generate(ModelRequest(prompt="two"))
        assert pool.snapshot()[0].breaker == "open"
        assert f"endpoint {A}: circuit opened after 3 consecutive faults" in caplog.text
        fake.now += 30
        healthy = True
        await pool.generate(ModelRequest(prompt="three"))
    assert pool.snapshot()[0].breaker == "closed"
    assert f"endpoint {A}: circuit closed" in caplog.text


# -- n fan-out ------------------------------------------------------------------------------


async def test_llamacpp_fans_out_seeded_n_with_seed_offsets(make: Factory) -> None:
    servers = Servers()
    pool = make(servers, settings(kind="llamacpp"))
    result = await pool.generate(ModelRequest(prompt="x", n=4, seed=7))
    bodies = sorted((b for _, b in servers.seen), key=lambda b: b["seed"])
    assert [(b["n"], b["seed"], b["cache_prompt"]) for b in bodies] == [
        (1, 7, False), (1, 8, False), (1, 9, False), (1, 10, False)
    ]  # fmt: skip
    assert result.emulated_n
    assert [c.index for c in result.choices] == [0, 1, 2, 3]
    assert [c.text.split(" ", 1)[1] for c in result.choices] == [
        "seed=7 i=0", "seed=8 i=0", "seed=9 i=0", "seed=10 i=0"
    ]  # fmt: skip
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (20, 8)
    assert len(result.attempts) == 4
    assert sorted(servers.hosts) == [A, A, B, B]  # spread by least outstanding


async def test_native_n_capped_by_max_n_is_chunked(make: Factory) -> None:
    servers = Servers()
    pool = make(servers, settings(max_n=3))
    result = await pool.generate(ModelRequest(messages=CHAT, n=7, seed=100))
    chunks = sorted((b["seed"], b["n"]) for _, b in servers.seen)
    assert chunks == [(100, 3), (103, 3), (106, 1)]
    assert [c.index for c in result.choices] == list(range(7))
    assert [c.text.split(" ", 1)[1] for c in result.choices] == [
        "seed=100 i=0", "seed=100 i=1", "seed=100 i=2",
        "seed=103 i=0", "seed=103 i=1", "seed=103 i=2", "seed=106 i=0",
    ]  # fmt: skip
    assert result.emulated_n


@pytest.mark.parametrize(
    ("overrides", "request_", "requests"),
    [
        ({"kind": "vllm", "max_n": 8}, ModelRequest(prompt="x", n=8, seed=1), 1),
        ({"kind": "llamacpp", "native_n": True, "max_n": 4}, ModelRequest(prompt="x", n=4), 1),
        (
            {"kind": "llamacpp", "native_n": True, "max_n": 4},
            ModelRequest(prompt="x", n=4, seed=3),
            4,
        ),
        ({"kind": "llamacpp"}, ModelRequest(prompt="x", n=3), 3),
        ({"kind": "vllm", "native_n": False}, ModelRequest(prompt="x", n=2), 2),
    ],
    ids=["vllm-native", "llamacpp-slots", "llamacpp-seeded", "llamacpp-default", "forced-off"],
)
async def test_when_n_fans_out(
    make: Factory, overrides: dict[str, Any], request_: ModelRequest, requests: int
) -> None:
    servers = Servers()
    result = await make(servers, settings(**overrides)).generate(request_)
    assert len(servers.seen) == requests
    assert result.emulated_n == (requests > 1)
    assert len(result.choices) == request_.n


async def test_a_failed_chunk_cancels_the_others(make: Factory) -> None:
    hung = asyncio.Event()

    async def script(request: httpx.Request, body: dict[str, Any]) -> httpx.Response | None:
        if body["seed"] == 1:
            hung.set()
            await asyncio.Event().wait()  # never answers
        await hung.wait()
        return error(400, "bad stop") if body["seed"] == 2 else None

    servers = Servers(script)
    pool = make(servers, settings(kind="llamacpp"))
    with pytest.raises(ModelHTTPError, match="bad stop") as caught:
        await pool.generate(ModelRequest(prompt="x", n=3, seed=0))
    errors = sorted(str(a["error"]) for a in caught.value.details["attempts"])
    assert errors == ["HTTP 400: bad stop", "None", "cancelled"]
    assert [s.outstanding for s in pool.snapshot()] == [0, 0]
    assert servers.in_flight == 0


# -- deadline and cancellation --------------------------------------------------------------


async def test_deadline_bounds_an_attempt_in_flight(make: Factory) -> None:
    async def hang(request: httpx.Request, body: dict[str, Any]) -> None:
        await asyncio.sleep(10)

    pool = make(Servers(hang))
    with pytest.raises(ModelTimeout) as caught:
        await pool.generate(ModelRequest(prompt="x"), timeout_s=0.05)
    assert "0.05 s deadline" in caught.value.message
    # Recorded as the deadline, and no verdict on the endpoint: the call ran out of time.
    assert [a["error"] for a in caught.value.details["attempts"]] == ["deadline"]
    assert [s.outstanding for s in pool.snapshot()] == [0, 0]
    assert [s.consecutive_failures for s in pool.snapshot()] == [0, 0]


async def test_deadline_stops_retrying_when_backoff_would_overrun(
    make: Factory, fake: FakeTime
) -> None:
    async def always_503(request: httpx.Request, body: dict[str, Any]) -> httpx.Response:
        return error(503, "busy", **{"Retry-After": "3"})

    servers = Servers(always_503)
    pool = make(servers, settings(backoff_max_s=5.0, max_attempts=10, breaker_failures=100))
    with pytest.raises(ModelTimeout) as caught:
        await pool.generate(ModelRequest(prompt="x"), timeout_s=7.0)
    # Fails at t=0, 3 and 6; a third 3 s wait would end past the 7 s deadline.
    assert fake.sleeps == [3.0, 3.0]
    assert len(caught.value.details["attempts"]) == 3


async def test_cancellation_propagates_and_restores_counts(make: Factory) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def hang(request: httpx.Request, body: dict[str, Any]) -> None:
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    pool = make(Servers(hang), settings(kind="llamacpp"))
    task = asyncio.create_task(pool.generate(ModelRequest(prompt="x", n=3)))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled.is_set()
    assert [s.outstanding for s in pool.snapshot()] == [0, 0]
    assert [s.breaker for s in pool.snapshot()] == ["closed", "closed"]


# -- health, registry --------------------------------------------------------------------------


async def test_health_falls_back_to_models_listing(make: Factory) -> None:
    async def script(request: httpx.Request, body: dict[str, Any]) -> httpx.Response:
        if request.url.host == "a":
            return httpx.Response(200, json={"status": "ok"})
        if request.url.path == "/health":
            return httpx.Response(404, json={"detail": "Not Found"})
        return httpx.Response(503, json={"error": {"message": "Loading model"}})

    servers = Servers(script)
    health = await make(servers).health()
    assert [(h.url, h.ok, h.status, h.probe) for h in health] == [
        (A, True, 200, "/health"),
        (B, False, 503, "/v1/models"),
    ]
    assert health[1].error == "HTTP 503: Loading model"
    assert [s.total_requests for s in make(servers).snapshot()] == [0, 0]


async def test_health_reports_unreachable_endpoints(make: Factory) -> None:
    async def refuse(request: httpx.Request, body: dict[str, Any]) -> httpx.Response:
        raise httpx.ConnectError("All connection attempts failed")

    health = await make(Servers(refuse)).health()
    assert [h.ok for h in health] == [False, False]
    assert health[0].error == "ConnectError: All connection attempts failed"


async def test_pools_share_one_client_and_close_it() -> None:
    pools = Pools.from_settings({"small": settings([A]), "large": settings([B], model="big")})
    assert sorted(pools) == ["large", "small"]
    assert pools["small"].name == "small"
    assert pools["small"]._http is pools["large"]._http
    with pytest.raises(KeyError, match="configured: large, small"):
        pools["verifier"]
    http = pools["small"]._http
    await pools.aclose()
    assert http.is_closed


async def test_injected_http_client_is_left_open() -> None:
    async with httpx.AsyncClient() as http:
        pools = Pools.from_settings({"small": settings([A])}, http)
        await pools.aclose()
        client = PoolClient("small", settings([A]), http)
        await client.aclose()
        assert not http.is_closed
    own = PoolClient("small", settings([A]))
    await own.aclose()
    assert own._http.is_closed


async def test_errors_are_model_errors(make: Factory) -> None:
    async def down(request: httpx.Request, body: dict[str, Any]) -> httpx.Response:
        return error(503)

    with pytest.raises(ModelError):
        await make(Servers(down), settings(max_attempts=1)).generate(ModelRequest(prompt="x"))


# -- over real HTTP, against the simulator ---------------------------------------------------


@pytest.fixture(scope="module")
def sims() -> Iterator[tuple[Simulator, Simulator]]:
    with Simulator() as first, Simulator() as second:
        yield first, second


def sim_pool(sims: tuple[Simulator, Simulator], fake: FakeTime, **overrides: Any) -> PoolClient:
    for sim in sims:
        sim.reset()
    pool = settings([sims[0].url, sims[1].url], **({"kind": "simulator"} | overrides))
    return PoolClient("small", pool, sleep=fake.sleep, clock=fake.clock)


@pytest.mark.parametrize("kind", ["status", "disconnect"])
async def test_simulator_failover(
    sims: tuple[Simulator, Simulator], fake: FakeTime, kind: Literal["status", "disconnect"]
) -> None:
    bad, good = sims
    bad.set_config(SimulatorConfig(failures=[Failure(kind=kind, status=503, times=100)]))
    good.set_config(SimulatorConfig(default_reply="4"))
    pool = sim_pool(sims, fake, breaker_failures=2)
    try:
        for _ in range(4):
            result = await pool.generate(ModelRequest(messages=CHAT, max_tokens=8))
            assert result.endpoint == good.url
            assert [c.text for c in result.choices] == ["4"]
    finally:
        await pool.aclose()
    assert bad.stats.failed_requests == 2  # then its circuit opened
    assert good.stats.requests == 4
    assert [s.breaker for s in pool.snapshot()] == ["open", "closed"]


async def test_simulator_counts_fanned_out_requests(
    sims: tuple[Simulator, Simulator], fake: FakeTime
) -> None:
    for sim in sims:
        sim.set_config(SimulatorConfig(max_n=2))
    pool = sim_pool(sims, fake, max_n=2)
    try:
        result = await pool.generate(ModelRequest(prompt="2+2=", n=5, seed=11, logprobs=True))
    finally:
        await pool.aclose()
    assert sum(sim.stats.requests for sim in sims) == 3  # n=2, 2, 1
    assert sum(sim.stats.choices_generated for sim in sims) == 5
    assert [c.index for c in result.choices] == [0, 1, 2, 3, 4]
    assert all(c.tokens for c in result.choices)
    assert result.usage.completion_tokens == sum(s.stats.completion_tokens for s in sims)
    assert result.emulated_n


async def test_simulator_rejects_n_above_its_slots_without_retrying(
    sims: tuple[Simulator, Simulator], fake: FakeTime
) -> None:
    for sim in sims:
        sim.set_config(SimulatorConfig(max_n=2))
    pool = sim_pool(sims, fake)  # the pool does not know max_n
    try:
        with pytest.raises(ModelHTTPError, match="HTTP 400: n=3 exceeds"):
            await pool.generate(ModelRequest(prompt="x", n=3))
    finally:
        await pool.aclose()
    assert sum(sim.stats.requests for sim in sims) == 1


async def test_simulator_health(sims: tuple[Simulator, Simulator], fake: FakeTime) -> None:
    pool = sim_pool(sims, fake)
    try:
        assert [h.ok for h in await pool.health()] == [True, True]
    finally:
        await pool.aclose()


# -- streams: the same attempt loop, a streamed body ---------------------------------------


def sse(*payloads: dict[str, Any] | str, then: Exception | None = None) -> httpx.Response:
    """A streamed completion: each payload a ``data:`` line (a str is sent as is)."""

    async def lines() -> AsyncIterator[bytes]:
        for payload in payloads:
            data = payload if isinstance(payload, str) else json.dumps(payload)
            yield f"data: {data}\n\n".encode()
        if then is not None:
            raise then
        yield b"data: [DONE]\n\n"

    return httpx.Response(200, content=lines(), headers={"content-type": "text/event-stream"})


def token(text: str, finish: str | None = None) -> dict[str, Any]:
    return {"model": "m", "choices": [{"index": 0, "text": text, "finish_reason": finish}]}


Body = Literal["generate", "stream"]


async def call_with(pool: PoolClient, body: Body) -> list[str]:
    """One call through the plain or the streamed body; the endpoints of its attempts."""
    if body == "generate":
        return [a.endpoint for a in (await pool.generate(ModelRequest(prompt="x"))).attempts]
    stream = pool.stream(ModelRequest(prompt="x"))
    async for _ in stream:
        pass
    return [a.endpoint for a in stream.attempts]


def answer(body: Body, host: str, request_body: dict[str, Any]) -> httpx.Response:
    if body == "generate":
        return ok(host, request_body)
    return sse(token("4", "stop"))


@pytest.mark.parametrize("body", ["generate", "stream"])
@pytest.mark.parametrize(
    ("status", "slept"),
    [(429, [2.0]), (503, [2.0]), (500, "jittered"), (502, "jittered")],
)
async def test_retry_after_only_on_429_and_503_in_both_bodies(
    make: Factory, fake: FakeTime, body: Body, status: int, slept: Any
) -> None:
    async def limited(request: httpx.Request, request_body: dict[str, Any]) -> httpx.Response:
        if len(servers.seen) == 1:
            return error(status, "busy", **{"Retry-After": "2"})
        return answer(body, "http://b:8000", request_body)

    servers = Servers(limited)
    pool = make(servers, settings(backoff_max_s=5.0))
    assert await call_with(pool, body) == [A, B]
    if slept == "jittered":
        assert len(fake.sleeps) == 1 and 0 <= fake.sleeps[0] <= 0.1  # not the 2 s asked
    else:
        assert fake.sleeps == slept
    assert [s.consecutive_failures for s in pool.snapshot()] == [1, 0]


@pytest.mark.parametrize("body", ["generate", "stream"])
async def test_invalid_answer_before_anything_is_delivered_fails_over(
    make: Factory, body: Body
) -> None:
    async def a_garbles(request: httpx.Request, request_body: dict[str, Any]) -> httpx.Response:
        if request.url.host == "a":
            if body == "generate":
                return httpx.Response(200, content=b"<html>not json</html>")
            return sse("{not json")
        return answer(body, "http://b:8000", request_body)

    pool = make(Servers(a_garbles))
    assert await call_with(pool, body) == [A, B]
    assert [s.consecutive_failures for s in pool.snapshot()] == [1, 0]


@pytest.mark.parametrize(
    ("tail", "error_text"),
    [("{not json", "invalid stream chunk"), (None, "ReadError: reset")],
    ids=["invalid-chunk", "broken-connection"],
)
async def test_a_stream_failing_after_its_first_delta_is_not_retried(
    make: Factory, fake: FakeTime, tail: str | None, error_text: str
) -> None:
    async def breaks(request: httpx.Request, request_body: dict[str, Any]) -> httpx.Response:
        if tail is not None:
            return sse(token("one"), tail)
        return sse(token("one"), then=httpx.ReadError("reset"))

    servers = Servers(breaks)
    pool = make(servers)
    stream = pool.stream(ModelRequest(prompt="x"))
    received: list[str] = []
    with pytest.raises(ModelError, match="stream broke") as caught:
        async for delta in stream:
            received.append(delta.text)
    # The caller already holds "one": a second attempt would hand it the start again.
    assert received == ["one"]
    assert error_text in caught.value.message
    assert len(servers.seen) == 1 and fake.sleeps == []
    [attempt] = stream.attempts
    assert attempt.status == 200 and error_text in str(attempt.error)
    # Still the endpoint's fault: its breaker counts it.
    assert [s.consecutive_failures for s in pool.snapshot()] == [1, 0]
    assert [s.outstanding for s in pool.snapshot()] == [0, 0]


async def test_stream_attempts_move_the_breaker_like_plain_calls(
    make: Factory, fake: FakeTime
) -> None:
    async def down(request: httpx.Request, request_body: dict[str, Any]) -> httpx.Response:
        return error(503)

    pool = make(Servers(down), settings([A], max_attempts=2, breaker_failures=2))
    stream = pool.stream(ModelRequest(prompt="x"))
    with pytest.raises(PoolUnavailable, match="all 2 attempts failed"):
        async for _ in stream:
            pass
    assert [a.status for a in stream.attempts] == [503, 503]
    assert pool.snapshot()[0].breaker == "open"
    with pytest.raises(PoolUnavailable, match="circuit open"):
        async for _ in pool.stream(ModelRequest(prompt="x")):
            pass


async def test_stream_deadline_bounds_backoff_like_plain_calls(
    make: Factory, fake: FakeTime
) -> None:
    async def busy(request: httpx.Request, request_body: dict[str, Any]) -> httpx.Response:
        return error(503, "busy", **{"Retry-After": "3"})

    pool = make(Servers(busy), settings(backoff_max_s=5.0, max_attempts=10, breaker_failures=100))
    stream = pool.stream(ModelRequest(prompt="x"), timeout_s=7.0)
    with pytest.raises(ModelTimeout):
        async for _ in stream:
            pass
    assert fake.sleeps == [3.0, 3.0]
    assert len(stream.attempts) == 3
