"""What Ponder relies on from a model server, asserted through ``PoolClient`` against
every server kind it supports: the simulator (always), llama.cpp via the embedded
0.5B model (always, marker ``embedded``) and vLLM (marker ``vllm``, when
``PONDER_TEST_VLLM_URL`` and ``PONDER_TEST_VLLM_MODEL`` are set; see docs/vllm.md).

Prompts are tiny and ``max_tokens`` small: on two CPU cores the embedded part must
stay well under a minute. The simulator's script mirrors what the real models answer
(they count "1, 2, 3, ..." reliably at temperature 0), so one test body serves all.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from core.embedded.catalog import INSTALL_HINT
from core.embedded.manager import EmbeddedModels
from core.pools.client import PoolClient, PoolResult
from core.settings import EmbeddedSettings, PoolSettings
from core.simulator import Rule, Simulator, SimulatorConfig
from strategies.protocol import ModelRequest

REPO = Path(__file__).resolve().parents[2]

COUNT = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
COUNT_PROMPT = "1, 2, 3, 4,"
ANIMAL = [{"role": "user", "content": "Name a random animal."}]

SCRIPT = SimulatorConfig(
    models=["sim"],
    rules=[
        Rule(match="Count from 1 to 10", replies=["1, 2, 3, 4, 5, 6, 7, 8, 9, 10"], pick="first"),
        Rule(match=r"\A1, 2, 3, 4,\Z", replies=[" 5, 6, 7, 8, 9, 10"], pick="first"),
        Rule(
            match="random animal",
            replies=["A cat.", "A lion.", "A snake.", "An owl.", "A wild tiger.", "A fox."],
            pick="seed",
        ),
    ],
)

KINDS = [
    pytest.param("simulator", id="simulator"),
    pytest.param("xllamacpp", id="xllamacpp", marks=pytest.mark.embedded),
    pytest.param("vllm", id="vllm", marks=pytest.mark.vllm),
]


@pytest.fixture(scope="module")
def embedded_small() -> Iterator[PoolSettings]:
    """The real 0.5B model behind llama.cpp's server, started once for this module."""
    try:
        import xllamacpp  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"xllamacpp is not installed: {INSTALL_HINT}")
    configured = os.environ.get("PONDER_EMBEDDED__CACHE_DIR")
    cache = Path(configured) if configured else REPO / "data" / "models"
    settings = EmbeddedSettings(roles=["small"], threads=2, slots=4, context=8192)
    with EmbeddedModels(settings, cache) as models:
        yield models.pools["small"]


@pytest.fixture(params=KINDS)
def pool(request: pytest.FixtureRequest) -> PoolSettings:
    kind = request.param
    if kind == "simulator":
        sim: Simulator = request.getfixturevalue("simulator")
        sim.set_config(SCRIPT)
        return PoolSettings(kind="simulator", endpoints=[sim.url], model="sim")
    if kind == "xllamacpp":
        settings: PoolSettings = request.getfixturevalue("embedded_small")
        return settings
    url = os.environ.get("PONDER_TEST_VLLM_URL")
    model = os.environ.get("PONDER_TEST_VLLM_MODEL")
    if not url or not model:
        pytest.skip(
            "set PONDER_TEST_VLLM_URL and PONDER_TEST_VLLM_MODEL to a running vLLM server "
            "(see docs/vllm.md)"
        )
    return PoolSettings(kind="vllm", endpoints=[url], model=model)


@pytest.fixture
async def client(pool: PoolSettings) -> AsyncIterator[PoolClient]:
    client = PoolClient("conformance", pool.model_copy(update={"max_attempts": 2}))
    try:
        yield client
    finally:
        await client.aclose()


def _only(result: PoolResult) -> str:
    assert len(result.choices) == 1
    return result.choices[0].text


async def test_chat(client: PoolClient) -> None:
    result = await client.generate(ModelRequest(messages=COUNT, temperature=0, max_tokens=32))
    text = _only(result)
    assert text.startswith("1, 2, 3, 4, 5")
    assert result.choices[0].finish_reason in ("stop", "length")
    assert result.model == client.settings.model
    assert result.endpoint == client.settings.endpoints[0]


async def test_completions(client: PoolClient) -> None:
    result = await client.generate(ModelRequest(prompt=COUNT_PROMPT, temperature=0, max_tokens=8))
    assert _only(result).startswith(" 5, 6")


async def test_usage_counts_prompt_and_completion_tokens(client: PoolClient) -> None:
    request = ModelRequest(
        prompt=COUNT_PROMPT, temperature=0, max_tokens=6, logprobs=True, top_logprobs=1
    )
    result = await client.generate(request)
    tokens = result.choices[0].tokens
    assert tokens is not None
    assert result.usage.prompt_tokens > 0
    assert result.usage.completion_tokens == len(tokens)
    assert 1 <= result.usage.completion_tokens <= 6


async def test_n_gives_n_distinct_indexed_choices(client: PoolClient) -> None:
    result = await client.generate(
        ModelRequest(messages=ANIMAL, n=3, temperature=1.0, max_tokens=8)
    )
    assert [c.index for c in result.choices] == [0, 1, 2]
    assert all(c.text for c in result.choices)
    # Native n where the server samples it itself, fanned out where it cannot.
    assert result.emulated_n == (not client.settings.supports_native_n())
    assert 3 <= result.usage.completion_tokens <= 3 * 8


async def test_seeded_sampling_is_reproducible(client: PoolClient) -> None:
    request = ModelRequest(messages=ANIMAL, temperature=1.0, seed=1234, max_tokens=8)
    first = await client.generate(request)
    second = await client.generate(request)
    assert _only(first) == _only(second)


async def test_seeded_n_choices_are_reproducible(
    client: PoolClient, request: pytest.FixtureRequest
) -> None:
    if client.settings.kind == "llamacpp":
        # Measured: llama.cpp's logits depend on which requests share a batch (first-token
        # logprobs move by ~0.01-0.05), so the n fanned-out requests, decoded together,
        # sample differently from run to run. Alone, a seeded request is reproducible.
        request.applymarker(
            pytest.mark.xfail(reason="llama.cpp: batch composition changes logits", strict=False)
        )
    call = ModelRequest(messages=ANIMAL, n=2, temperature=1.0, seed=1234, max_tokens=8)
    first = await client.generate(call)
    second = await client.generate(call)
    assert [c.text for c in first.choices] == [c.text for c in second.choices]


async def test_seeded_choices_differ_at_positive_temperature(client: PoolClient) -> None:
    result = await client.generate(
        ModelRequest(messages=ANIMAL, n=4, temperature=1.0, seed=7, max_tokens=8)
    )
    texts = [c.text for c in result.choices]
    assert len(texts) == 4
    assert len(set(texts)) >= 2, texts


async def test_stop_cuts_before_the_stop_string(client: PoolClient) -> None:
    result = await client.generate(
        ModelRequest(prompt=COUNT_PROMPT, temperature=0, max_tokens=16, stop=["7"])
    )
    text = _only(result)
    assert text.rstrip().rstrip(",").endswith("6"), text
    assert "7" not in text
    assert result.choices[0].finish_reason == "stop"


async def test_max_tokens_ends_with_length(client: PoolClient) -> None:
    result = await client.generate(ModelRequest(messages=COUNT, temperature=0, max_tokens=3))
    assert result.choices[0].finish_reason == "length"
    assert result.usage.completion_tokens == 3


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "completions"])
async def test_token_logprobs_and_top_alternatives(client: PoolClient, chat: bool) -> None:
    request = (
        ModelRequest(messages=COUNT, temperature=0, max_tokens=5, logprobs=True, top_logprobs=3)
        if chat
        else ModelRequest(
            prompt=COUNT_PROMPT, temperature=0, max_tokens=5, logprobs=True, top_logprobs=3
        )
    )
    result = await client.generate(request)
    choice = result.choices[0]
    assert choice.tokens is not None
    assert len(choice.tokens) == result.usage.completion_tokens
    assert "".join(t.token for t in choice.tokens) == choice.text
    for token in choice.tokens:
        assert token.logprob <= 0.0
        assert 1 <= len(token.top) <= 3
        top = [logprob for _, logprob in token.top]
        assert top == sorted(top, reverse=True)
        assert all(lp <= 0.0 for lp in top)
        # Greedy decoding picks the most likely token.
        assert token.top[0][0] == token.token
        assert token.logprob == pytest.approx(top[0], abs=1e-4)


async def test_continuing_a_prefilled_assistant_message_returns_only_the_continuation(
    client: PoolClient,
) -> None:
    prefilled = [*COUNT, {"role": "assistant", "content": "1, 2, 3,"}]
    result = await client.generate(
        ModelRequest(messages=prefilled, continue_final_message=True, temperature=0, max_tokens=6)
    )
    text = _only(result)
    assert text.lstrip().startswith("4"), text
    assert "1, 2, 3" not in text


async def test_streaming_yields_the_same_text_as_a_plain_call(client: PoolClient) -> None:
    request = ModelRequest(messages=COUNT, temperature=0, max_tokens=12)
    plain = _only(await client.generate(request))
    stream = client.stream(request)
    pieces = [d.text async for d in stream if d.text]
    assert "".join(pieces) == plain
    assert len(pieces) > 1  # really streamed, not one final chunk
    assert stream.finish_reason in ("stop", "length")
    # Every delta is one decoded token, which is what a stopped stream is charged.
    assert stream.usage is not None and stream.usage.completion_tokens == len(pieces)


async def test_streaming_a_continuation_returns_only_the_continuation(
    client: PoolClient,
) -> None:
    prefilled = [*COUNT, {"role": "assistant", "content": "1, 2, 3,"}]
    request = ModelRequest(
        messages=prefilled, continue_final_message=True, temperature=0, max_tokens=6
    )
    text = "".join([d.text async for d in client.stream(request)])
    assert text.lstrip().startswith("4"), text
    assert "1, 2, 3" not in text


async def test_leaving_a_stream_early_closes_it(client: PoolClient) -> None:
    request = ModelRequest(messages=COUNT, temperature=0, max_tokens=24)
    pieces: list[str] = []
    async for delta in client.stream(request):
        if delta.text:
            pieces.append(delta.text)
        if len(pieces) == 2:
            break
    # The connection was given back: the next call on the pool is answered normally.
    again = await client.generate(ModelRequest(messages=COUNT, temperature=0, max_tokens=4))
    assert _only(again).startswith("1")
    assert client.snapshot()[0].outstanding == 0
