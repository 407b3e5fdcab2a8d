"""The scripted simulator, exercised over real HTTP as every other test will use it."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.errors import ConfigError
from core.simulator import Failure, Latency, Rule, Simulator, SimulatorConfig, load_config
from core.simulator.engine import shaped_distribution, tokenize

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


@pytest.fixture
def client(simulator: Simulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=simulator.url, timeout=10) as c:
        yield c


def chat(client: httpx.Client, content: str = "hi", **body: Any) -> dict[str, Any]:
    messages = body.pop("messages", [{"role": "user", "content": content}])
    r = client.post(CHAT, json={"model": "sim", "messages": messages, **body})
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def texts(result: dict[str, Any]) -> list[str]:
    return [c["message"]["content"] if "message" in c else c["text"] for c in result["choices"]]


def sse(response: httpx.Response) -> list[Any]:
    events = [line[len("data: ") :] for line in response.text.splitlines() if line]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def entropy(logprobs: list[float]) -> float:
    probs = [math.exp(lp) for lp in logprobs]
    total = sum(probs)
    return -sum(p / total * math.log(p / total) for p in probs if p > 0)


# --- pure pieces ---------------------------------------------------------------


def test_tokenize_is_documented_pieces_that_rejoin() -> None:
    text = "Hello, world!  The answer is 42.\n"
    pieces = tokenize(text)
    assert pieces == ["Hello", ",", " world", "!", "  The", " answer", " is", " 42", ".", "\n"]
    assert "".join(pieces) == text


@pytest.mark.parametrize(("target", "k"), [(0.0, 2), (0.3, 2), (0.5, 5), (1.2, 5), (9.0, 3)])
def test_shaped_distribution_hits_entropy(target: float, k: int) -> None:
    probs = shaped_distribution(target, k)
    assert len(probs) == k and math.isclose(sum(probs), 1.0)
    assert probs[0] == max(probs)
    assert math.isclose(
        entropy([math.log(p) if p else -9999 for p in probs]),
        min(target, math.log(k)),
        abs_tol=1e-9,
    )


# --- replies -------------------------------------------------------------------


def test_default_reply_and_openai_shape(client: httpx.Client) -> None:
    result = chat(client, "What is 6 x 7?", unknown_vllm_field={"ignored": True})
    assert result["object"] == "chat.completion"
    assert result["model"] == "sim"
    assert result["id"] and isinstance(result["created"], int)
    choice = result["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "The answer is 42."}
    assert choice["finish_reason"] == "stop" and choice["logprobs"] is None
    # "user: What is 6 x 7?" -> user : What is 6 x 7 ?
    assert result["usage"] == {"prompt_tokens": 8, "completion_tokens": 5, "total_tokens": 13}


def test_cycle_advances_per_choice_across_requests(
    simulator: Simulator, client: httpx.Client
) -> None:
    simulator.set_config(SimulatorConfig(rules=[Rule(match="capital", replies=["A", "B", "C"])]))
    assert texts(chat(client, "capital?", n=2)) == ["A", "B"]
    assert texts(chat(client, "capital?", n=2)) == ["C", "A"]
    assert texts(chat(client, "something else")) == ["The answer is 42."]
    simulator.reset()
    assert texts(chat(client, "capital?")) == ["A"]


def test_first_matching_rule_wins_and_model_filter(
    simulator: Simulator, client: httpx.Client
) -> None:
    simulator.set_config(
        SimulatorConfig(
            rules=[
                Rule(match="verify", model="judge", replies=["VALID"], pick="first"),
                Rule(match=r"system: Be terse.*user: sum", replies=["3"]),
                Rule(replies=["fallback"]),
            ]
        )
    )
    messages = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "sum 1 2"},
    ]
    assert texts(chat(client, messages=messages)) == ["3"]
    assert texts(chat(client, "verify this", model="judge", n=2)) == ["VALID", "VALID"]
    assert texts(chat(client, "verify this", model="other")) == ["fallback"]


def test_seed_pick_is_reproducible(simulator: Simulator, client: httpx.Client) -> None:
    replies = [f"reply {i}" for i in range(10)]
    simulator.set_config(SimulatorConfig(rules=[Rule(replies=replies, pick="seed")]))
    first = texts(chat(client, n=4, seed=7))
    assert texts(chat(client, n=4, seed=7)) == first
    simulator.set_config(SimulatorConfig(rules=[Rule(replies=replies, pick="seed")]))
    assert texts(chat(client, n=4, seed=7)) == first
    assert len({tuple(texts(chat(client, n=4, seed=s))) for s in range(8)}) > 1
    # Without a seed it cycles.
    assert texts(chat(client, n=2)) == ["reply 0", "reply 1"]


def test_stop_cuts_before_first_occurrence(simulator: Simulator, client: httpx.Client) -> None:
    simulator.set_config(SimulatorConfig(default_reply="Step 1. Step 2. Answer: 7", rules=[]))
    result = chat(client, stop=["Answer", "Step 2"])
    assert texts(result) == ["Step 1. "]
    assert result["choices"][0]["finish_reason"] == "stop"
    assert texts(chat(client, stop="7")) == ["Step 1. Step 2. Answer: "]


def test_max_tokens_truncates_with_length(simulator: Simulator, client: httpx.Client) -> None:
    simulator.set_config(SimulatorConfig(rules=[Rule(replies=["one two three four"])]))
    result = chat(client, max_tokens=2)
    assert texts(result) == ["one two"]
    assert result["choices"][0]["finish_reason"] == "length"
    assert result["usage"]["completion_tokens"] == 2
    assert texts(chat(client, max_completion_tokens=3)) == ["one two three"]


def test_rule_finish_reason(simulator: Simulator, client: httpx.Client) -> None:
    simulator.set_config(SimulatorConfig(rules=[Rule(replies=["cut"], finish_reason="length")]))
    assert chat(client)["choices"][0]["finish_reason"] == "length"


def test_assistant_prefill_is_continued(simulator: Simulator, client: httpx.Client) -> None:
    simulator.set_config(
        SimulatorConfig(
            rules=[Rule(match="assistant: Let me think", replies=["Let me think. It is 7."])]
        )
    )
    messages = [
        {"role": "user", "content": "3+4?"},
        {"role": "assistant", "content": "Let me think."},
    ]
    result = chat(
        client, messages=messages, continue_final_message=True, add_generation_prompt=False
    )
    assert texts(result) == [" It is 7."]


def test_completions_prompt_list(simulator: Simulator, client: httpx.Client) -> None:
    simulator.set_config(
        SimulatorConfig(rules=[Rule(match="^a", replies=["x"]), Rule(match="^b", replies=["y"])])
    )
    r = client.post(COMPLETIONS, json={"model": "sim", "prompt": ["a", "b"], "n": 2})
    body = r.json()
    assert body["object"] == "text_completion"
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert texts(body) == ["x", "x", "y", "y"]
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}


# --- logprobs ------------------------------------------------------------------


def test_chat_logprobs_layout(simulator: Simulator, client: httpx.Client) -> None:
    simulator.set_config(SimulatorConfig(rules=[Rule(replies=["It is 4."], token_logprob=-0.2)]))
    result = chat(client, logprobs=True, top_logprobs=3)
    content = result["choices"][0]["logprobs"]["content"]
    assert "".join(t["token"] for t in content) == "It is 4."
    for t in content:
        assert t["logprob"] == -0.2
        assert t["bytes"] == list(t["token"].encode())
        top = t["top_logprobs"]
        assert top[0]["token"] == t["token"] and len(top) == 3
        assert len({a["token"] for a in top}) == 3
        assert all(a["logprob"] < t["logprob"] for a in top[1:])
    plain = chat(client, logprobs=True)["choices"][0]["logprobs"]["content"]
    assert all(t["top_logprobs"] == [] for t in plain)


def test_completions_legacy_and_chat_layouts(simulator: Simulator, client: httpx.Client) -> None:
    simulator.set_config(SimulatorConfig(default_reply="Yes, 4."))
    body = {"model": "sim", "prompt": "Is 2+2=4?", "logprobs": 2}
    legacy = client.post(COMPLETIONS, json=body).json()["choices"][0]["logprobs"]
    assert legacy["tokens"] == ["Yes", ",", " 4", "."]
    assert legacy["token_logprobs"] == [-0.05] * 4
    assert legacy["text_offset"] == [0, 3, 4, 6]
    assert all(
        len(top) == 2 and tok in top
        for top, tok in zip(legacy["top_logprobs"], legacy["tokens"], strict=True)
    )
    simulator.set_config(
        SimulatorConfig(default_reply="Yes, 4.", completions_logprobs_layout="chat")
    )
    llama = client.post(COMPLETIONS, json=body).json()["choices"][0]["logprobs"]
    assert [t["token"] for t in llama["content"]] == legacy["tokens"]


@pytest.mark.parametrize(("target", "top"), [(0.0, 5), (0.25, 5), (1.0, 5), (0.4, None)])
def test_first_token_entropy_shapes_alternatives(
    simulator: Simulator, client: httpx.Client, target: float, top: int | None
) -> None:
    simulator.set_config(
        SimulatorConfig(rules=[Rule(replies=["Paris is it."], first_token_entropy=target)])
    )
    extra: dict[str, Any] = {"top_logprobs": top} if top is not None else {}
    content = chat(client, logprobs=True, **extra)["choices"][0]["logprobs"]["content"]
    first = content[0]["top_logprobs"]
    assert len(first) == max(top or 0, 2)
    assert first[0]["token"] == "Paris" == content[0]["token"]
    assert first[0]["logprob"] == max(a["logprob"] for a in first)
    assert math.isclose(entropy([a["logprob"] for a in first]), target, abs_tol=1e-6)


# --- latency and load ----------------------------------------------------------


def timed(client: httpx.Client, **body: Any) -> float:
    start = time.perf_counter()
    chat(client, **body)
    return time.perf_counter() - start


def test_latency_batch_n_costs_one_sample(simulator: Simulator, client: httpx.Client) -> None:
    reply = "a b c d e f g h i j"  # 10 tokens
    for batch_n in (True, False):
        latency = Latency(per_token_ms=5, batch_n=batch_n)
        simulator.set_config(SimulatorConfig(rules=[Rule(replies=[reply], latency=latency)]))
        if batch_n:
            batched = timed(client, n=4)
        else:
            sequential = timed(client, n=4)
    assert batched >= 0.045 and sequential >= 0.19
    assert sequential > 2 * batched


def test_ttft_and_prompt_latency(simulator: Simulator, client: httpx.Client) -> None:
    simulator.set_config(
        SimulatorConfig(latency=Latency(ttft_ms=30, prompt_per_token_ms=2), default_reply="")
    )
    assert timed(client, content="x " * 30) >= 0.03 + 0.002 * 31


async def test_concurrency_slowdown_and_max_in_flight(simulator: Simulator) -> None:
    latency = Latency(per_token_ms=10, concurrency_slowdown=1.0)
    simulator.set_config(SimulatorConfig(default_reply="a b c d e", latency=latency))
    body = {"model": "sim", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(base_url=simulator.url, timeout=10) as client:
        start = time.perf_counter()
        await client.post(CHAT, json=body)
        alone = time.perf_counter() - start
        start = time.perf_counter()
        results = await asyncio.gather(*(client.post(CHAT, json=body) for _ in range(5)))
        crowded = time.perf_counter() - start
    assert all(r.status_code == 200 for r in results)
    # Lower bounds only (sleeps guarantee them; a loaded machine can only add time):
    # alone, 5 tokens x 10 ms; the last of five concurrent requests sees 4 others in flight.
    assert alone >= 0.05
    assert crowded >= 0.05 * (1 + 4)
    stats = simulator.stats
    assert stats.max_in_flight == 5 and stats.requests == 6 and stats.chat_requests == 6


async def test_max_running_queues_and_metrics_report_it(simulator: Simulator) -> None:
    simulator.set_config(
        SimulatorConfig(max_running=1, models=["m1"], latency=Latency(ttft_ms=150))
    )
    body = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(base_url=simulator.url, timeout=10) as client:
        calls = [asyncio.ensure_future(client.post(CHAT, json=body)) for _ in range(3)]
        await asyncio.sleep(0.08)
        metrics = (await client.get("/metrics")).text
        await asyncio.gather(*calls)
        idle = (await client.get("/metrics")).text
    assert 'vllm:num_requests_running{model_name="m1"} 1.0' in metrics
    assert 'vllm:num_requests_waiting{model_name="m1"} 2.0' in metrics
    assert "# TYPE vllm:num_requests_running gauge" in metrics
    assert 'vllm:num_requests_running{model_name="m1"} 0.0' in idle
    assert 'vllm:num_requests_waiting{model_name="m1"} 0.0' in idle


@pytest.mark.parametrize("stream", [False, True])
async def test_abandoned_requests_stop_running(simulator: Simulator, stream: bool) -> None:
    simulator.set_config(SimulatorConfig(latency=Latency(ttft_ms=5000)))
    body = {"model": "sim", "prompt": "x", "stream": stream}
    async with httpx.AsyncClient(base_url=simulator.url) as client:
        with pytest.raises(httpx.ReadTimeout):
            r = await client.post(COMPLETIONS, json=body, timeout=httpx.Timeout(5, read=0.2))
            await r.aread()
    async with httpx.AsyncClient(base_url=simulator.url) as client:
        for _ in range(50):
            metrics = (await client.get("/metrics")).text
            if 'running{model_name="sim"} 0.0' in metrics:
                break
            await asyncio.sleep(0.02)
    assert 'vllm:num_requests_running{model_name="sim"} 0.0' in metrics


# --- failures ------------------------------------------------------------------


def test_status_failure_then_success(simulator: Simulator, client: httpx.Client) -> None:
    simulator.set_config(
        SimulatorConfig(failures=[Failure(status=429, times=2, retry_after_s=1.5)])
    )
    for _ in range(2):
        r = client.post(CHAT, json={"model": "sim", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 429
        assert r.headers["retry-after"] == "1.5"
        error = r.json()["error"]
        assert error["type"] == "rate_limit_error" and error["code"] == 429 and error["message"]
    assert texts(chat(client)) == ["The answer is 42."]
    stats = simulator.stats
    assert stats.failed_requests == 2 and stats.requests == 3 and stats.choices_generated == 1


def test_failure_match_only_hits_matching_prompts(
    simulator: Simulator, client: httpx.Client
) -> None:
    simulator.set_config(SimulatorConfig(failures=[Failure(match="poison", status=503)]))
    assert chat(client, "fine")["choices"]
    r = client.post(
        CHAT, json={"model": "sim", "messages": [{"role": "user", "content": "poison"}]}
    )
    assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
    assert chat(client, "poison")["choices"]


def test_disconnect_failure(simulator: Simulator, client: httpx.Client) -> None:
    simulator.set_config(SimulatorConfig(failures=[Failure(kind="disconnect")]))
    with pytest.raises(httpx.RemoteProtocolError, match="disconnected"):
        chat(client)
    assert texts(chat(client)) == ["The answer is 42."]
    assert simulator.stats.failed_requests == 1


def test_hang_failure_until_client_gives_up(simulator: Simulator, client: httpx.Client) -> None:
    simulator.set_config(SimulatorConfig(failures=[Failure(kind="hang")]))
    start = time.perf_counter()
    with pytest.raises(httpx.ReadTimeout):
        client.post(
            CHAT,
            json={"model": "sim", "messages": [{"role": "user", "content": "x"}]},
            timeout=httpx.Timeout(10, read=0.3),
        )
    assert time.perf_counter() - start < 2
    assert texts(chat(client)) == ["The answer is 42."]


def test_stop_ends_hanging_requests_promptly() -> None:
    sim = Simulator(SimulatorConfig(failures=[Failure(kind="hang")]))
    url = sim.start()
    outcome: list[object] = []

    def call() -> None:
        try:
            body = {"model": "sim", "prompt": "x"}
            outcome.append(httpx.post(f"{url}{COMPLETIONS}", json=body, timeout=30).status_code)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.2)
    start = time.perf_counter()
    sim.stop()
    thread.join(5)
    assert time.perf_counter() - start < 5
    assert outcome == [503]  # the hang answers "stopping" instead of holding shutdown
    with pytest.raises(RuntimeError, match="not running"):
        _ = sim.url


@pytest.mark.parametrize(
    ("path", "body", "named"),
    [
        (CHAT, {"model": "sim"}, "messages"),
        (CHAT, {"messages": [{"role": "user", "content": "x"}], "prompt": "x"}, "prompt"),
        (COMPLETIONS, {"model": "sim"}, "prompt"),
        (COMPLETIONS, {"prompt": [1, 2, 3]}, "prompt"),
        (CHAT, {"messages": [{"role": "user", "content": "x"}], "n": 5}, "n=5"),
        (CHAT, {"messages": [{"role": "user", "content": "x"}], "stop": 3}, "stop"),
        (CHAT, {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "logprobs"),
        (CHAT, {"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
        (COMPLETIONS, {"prompt": "x", "logprobs": 50}, "logprobs"),
    ],
)
def test_bad_bodies_get_400_naming_the_field(
    simulator: Simulator, client: httpx.Client, path: str, body: dict[str, Any], named: str
) -> None:
    simulator.set_config(SimulatorConfig(max_n=4))
    r = client.post(path, json=body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert named in error["message"] and error["type"] == "invalid_request_error"


def test_invalid_json_body(client: httpx.Client) -> None:
    r = client.post(CHAT, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


# --- streaming -----------------------------------------------------------------


def test_chat_streaming(simulator: Simulator, client: httpx.Client) -> None:
    simulator.set_config(SimulatorConfig(rules=[Rule(replies=["Four.", "It is 4."])]))
    r = client.post(
        CHAT,
        json={
            "messages": [{"role": "user", "content": "2+2"}],
            "n": 2,
            "stream": True,
            "stream_options": {"include_usage": True},
            "logprobs": True,
        },
    )
    assert r.headers["content-type"].startswith("text/event-stream")
    chunks = sse(r)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    by_choice: dict[int, str] = {0: "", 1: ""}
    finish: dict[int, str] = {}
    for c in chunks[:-1]:
        (choice,) = c["choices"]
        by_choice[choice["index"]] += choice["delta"].get("content") or ""
        if choice["finish_reason"]:
            finish[choice["index"]] = choice["finish_reason"]
        elif choice["delta"].get("content"):
            assert choice["logprobs"]["content"][0]["token"] == choice["delta"]["content"]
    assert by_choice == {0: "Four.", 1: "It is 4."}
    assert finish == {0: "stop", 1: "stop"}
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 2 + 4


def test_completions_streaming_paced(simulator: Simulator, client: httpx.Client) -> None:
    simulator.set_config(
        SimulatorConfig(default_reply="a b c d e", latency=Latency(per_token_ms=20))
    )

    def arrivals() -> list[float]:
        times = []
        text = ""
        start = time.perf_counter()
        with client.stream("POST", COMPLETIONS, json={"prompt": "go", "stream": True}) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[len("data: ") :])
                    if chunk["choices"] and chunk["choices"][0]["text"]:
                        times.append(time.perf_counter() - start)
                        text += chunk["choices"][0]["text"]
        assert text == "a b c d e" and len(times) == 5
        assert times[-1] >= 0.095  # five tokens at 20 ms cannot all be there sooner
        return times

    # Tokens arrive spread out, not in one piece at the end. A client starved of CPU may
    # read several at once, so one run in three showing the spread is enough.
    spreads = []
    for _ in range(3):
        times = arrivals()
        spreads.append(times[-1] - times[0])
        if spreads[-1] >= 0.06:
            break
    assert max(spreads) >= 0.06, spreads


# --- control endpoints ---------------------------------------------------------


def test_models_health_and_control_endpoints(simulator: Simulator, client: httpx.Client) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    models = client.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["sim"]
    r = client.put("/sim/config", json={"models": ["a", "b"], "default_reply": "via http"})
    assert r.status_code == 200
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["a", "b"]
    chat(client, model="b")
    client.post(COMPLETIONS, json={"model": "a", "prompt": "p", "n": 3})
    stats = client.get("/sim/stats").json()
    assert stats["requests"] == 2 and stats["completion_requests"] == 1
    assert stats["by_model"] == {"a": 1, "b": 1} and stats["choices_generated"] == 4
    assert stats["completion_tokens"] == 4 * len(tokenize("via http"))
    assert simulator.stats.requests == 2
    assert client.post("/sim/reset").json() == {"status": "ok"}
    assert client.get("/sim/stats").json()["requests"] == 0
    bad = client.put("/sim/config", json={"replys": ["typo"]})
    assert bad.status_code == 400 and "replys" in bad.json()["error"]["message"]


# --- script files --------------------------------------------------------------


def test_load_config_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "script.json"
    path.write_text(json.dumps({"rules": [{"match": "2\\+2", "replies": ["4"]}], "max_n": 8}))
    config = load_config(path)
    assert config.rules[0].replies == ["4"] and config.max_n == 8


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ({"rules": [{"match": "x", "replys": ["typo"]}]}, "rules.0.replys"),
        ({"rules": [{"replies": []}]}, "rules.0.replies"),
        ({"rules": [{"match": "(", "replies": ["x"]}]}, "invalid regex"),
        ({"failures": [{"kind": "explode"}]}, "failures.0.kind"),
        ("{not json", "not valid JSON"),
    ],
)
def test_load_config_bad_file_names_the_problem(
    tmp_path: Path, content: object, named: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ConfigError, match=r"bad\.json") as info:
        load_config(path)
    assert named in str(info.value)
