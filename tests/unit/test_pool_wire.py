"""Request bodies per server kind, and both logprob layouts parsed into protocol types."""

from __future__ import annotations

from typing import Any

import pytest

from core.pools.wire import (
    CHAT_PATH,
    COMPLETIONS_PATH,
    WireError,
    build_body,
    chunk_body,
    error_message,
    parse_response,
    retry_after,
)
from core.settings import PoolSettings, ServerKind
from strategies.protocol import ModelRequest, TokenLogprob

CHAT = [{"role": "user", "content": "What is 2+2?"}]
PREFILL = [*CHAT, {"role": "assistant", "content": "The answer is"}]


def pool(kind: ServerKind = "vllm") -> PoolSettings:
    return PoolSettings(endpoints=["http://gpu1:8000/v1"], model="qwen", kind=kind)


def test_chat_body_omits_unset_fields() -> None:
    path, body = build_body(ModelRequest(messages=CHAT, max_tokens=32), pool())
    assert path == CHAT_PATH
    assert body == {"model": "qwen", "messages": CHAT, "n": 1, "max_tokens": 32}


def test_completion_body_carries_sampling_fields() -> None:
    request = ModelRequest(
        prompt="2+2=", n=3, max_tokens=8, stop=["\n"], temperature=0.7, top_p=0.9, seed=5
    )
    path, body = build_body(request, pool())
    assert path == COMPLETIONS_PATH
    assert body == {
        "model": "qwen",
        "prompt": "2+2=",
        "n": 3,
        "max_tokens": 8,
        "stop": ["\n"],
        "temperature": 0.7,
        "top_p": 0.9,
        "seed": 5,
    }


def test_chat_logprobs_are_a_flag_plus_top_logprobs() -> None:
    _, body = build_body(ModelRequest(messages=CHAT, logprobs=True, top_logprobs=5), pool())
    assert body["logprobs"] is True
    assert body["top_logprobs"] == 5
    _, body = build_body(ModelRequest(messages=CHAT, logprobs=True), pool())
    assert body["logprobs"] is True
    assert "top_logprobs" not in body


@pytest.mark.parametrize(("top", "sent"), [(None, 1), (0, 1), (4, 4)])
def test_completion_logprobs_are_a_count(top: int | None, sent: int) -> None:
    _, body = build_body(ModelRequest(prompt="x", logprobs=True, top_logprobs=top), pool())
    assert body["logprobs"] == sent
    assert "top_logprobs" not in body


@pytest.mark.parametrize("kind", ["vllm", "openai", "simulator"])
def test_continue_final_message_uses_vllm_fields(kind: ServerKind) -> None:
    request = ModelRequest(messages=PREFILL, continue_final_message=True)
    _, body = build_body(request, pool(kind))
    assert body["continue_final_message"] is True
    assert body["add_generation_prompt"] is False
    assert body["messages"] == PREFILL


def test_llamacpp_continues_a_trailing_assistant_message_by_itself() -> None:
    request = ModelRequest(messages=PREFILL, continue_final_message=True)
    _, body = build_body(request, pool("llamacpp"))
    assert "continue_final_message" not in body
    assert "add_generation_prompt" not in body
    assert body["messages"] == PREFILL


def test_llamacpp_seed_disables_the_prompt_cache() -> None:
    _, seeded = build_body(ModelRequest(prompt="x", seed=1), pool("llamacpp"))
    assert seeded["cache_prompt"] is False
    _, unseeded = build_body(ModelRequest(prompt="x"), pool("llamacpp"))
    assert "cache_prompt" not in unseeded
    _, vllm = build_body(ModelRequest(prompt="x", seed=1), pool("vllm"))
    assert "cache_prompt" not in vllm


def test_chunk_body_moves_the_seed_by_the_first_choice_index() -> None:
    _, body = build_body(ModelRequest(prompt="x", n=8, seed=100), pool())
    chunk = chunk_body(body, 3, 6)
    assert (chunk["n"], chunk["seed"]) == (3, 106)
    assert (body["n"], body["seed"]) == (8, 100)  # the original is untouched
    _, unseeded = build_body(ModelRequest(prompt="x", n=8), pool())
    assert "seed" not in chunk_body(unseeded, 1, 5)


def test_parse_chat_with_null_content_and_logprobs() -> None:
    data = {
        "model": "qwen-served",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "4"},
                "finish_reason": "stop",
                "logprobs": {
                    "content": [
                        {
                            "token": "4",
                            "logprob": -0.1,
                            "bytes": [52],
                            "top_logprobs": [
                                {"token": "4", "logprob": -0.1},
                                {"token": "5", "logprob": -2.5},
                            ],
                        }
                    ]
                },
            },
            {"index": 1, "message": {"role": "assistant", "content": None}, "logprobs": None},
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13},
    }
    model, choices, usage = parse_response(data, chat=True)
    assert model == "qwen-served"
    assert [c.text for c in choices] == ["4", ""]
    assert choices[0].finish_reason == "stop"
    assert choices[0].tokens == [
        TokenLogprob(token="4", logprob=-0.1, top=[("4", -0.1), ("5", -2.5)])
    ]
    assert choices[1].tokens is None
    assert (usage.prompt_tokens, usage.completion_tokens) == (12, 1)


def test_parse_legacy_completion_logprobs() -> None:
    data = {
        "choices": [
            {
                "index": 0,
                "text": " 4",
                "finish_reason": "length",
                "logprobs": {
                    "tokens": [" 4", "."],
                    "token_logprobs": [-0.2, None],
                    "top_logprobs": [{" 4": -0.2, " 5": -1.9}, None],
                    "text_offset": [0, 2],
                },
            }
        ]
    }
    model, choices, usage = parse_response(data, chat=False)
    assert model is None
    assert choices[0].text == " 4"
    assert choices[0].tokens == [
        TokenLogprob(token=" 4", logprob=-0.2, top=[(" 4", -0.2), (" 5", -1.9)]),
        TokenLogprob(token=".", logprob=-9999.0, top=[]),
    ]
    assert usage.total_tokens == 0  # absent usage is not invented


def test_parse_llamacpp_completion_in_chat_layout() -> None:
    data = {
        "choices": [
            {
                "index": 0,
                "text": "4",
                "logprobs": {
                    "content": [
                        {
                            "id": 19,
                            "token": "4",
                            "logprob": -0.3,
                            "top_logprobs": [{"id": 19, "token": "4", "logprob": -0.3}],
                        }
                    ]
                },
            }
        ],
        "usage": {"prompt_tokens": 3},
    }
    _, choices, usage = parse_response(data, chat=False)
    assert choices[0].tokens == [TokenLogprob(token="4", logprob=-0.3, top=[("4", -0.3)])]
    assert (usage.prompt_tokens, usage.completion_tokens) == (3, 0)


def test_parse_orders_by_server_index_and_renumbers() -> None:
    data = {"choices": [{"index": 1, "text": "b"}, {"index": 0, "text": "a"}]}
    _, choices, _ = parse_response(data, chat=False, first_index=4)
    assert [(c.index, c.text) for c in choices] == [(4, "a"), (5, "b")]


@pytest.mark.parametrize(
    "data",
    [[], {"object": "list"}, {"choices": "x"}, {"choices": [{"text": "a", "logprobs": 3}]}],
)
def test_parse_rejects_bodies_that_are_not_completions(data: Any) -> None:
    with pytest.raises(WireError):
        parse_response(data, chat=False)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"error": {"message": "n too large", "type": "invalid_request_error"}}', "n too large"),
        (b'{"object": "error", "message": "bad model", "code": 404}', "bad model"),
        (b'{"detail": "Not Found"}', "Not Found"),
        (b'{"error": "Loading model"}', "Loading model"),
        (b"<html>Bad Gateway</html>", "<html>Bad Gateway</html>"),
    ],
)
def test_error_message_extracts_the_servers_explanation(content: bytes, message: str) -> None:
    assert error_message(content) == message


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("2", 2.0), ("0.5", 0.5), (None, None), ("-1", None), ("nan", None),
     ("Wed, 21 Oct 2015 07:28:00 GMT", None)],
)  # fmt: skip
def test_retry_after_takes_seconds_only(header: str | None, seconds: float | None) -> None:
    assert retry_after(header) == seconds


def test_alternatives_are_ranked_most_likely_first() -> None:
    # vLLM at temperature > 0 lists the sampled token first even when it is less likely.
    data = {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "b"},
                "finish_reason": "stop",
                "logprobs": {
                    "content": [
                        {
                            "token": "b",
                            "logprob": -2.0,
                            "top_logprobs": [
                                {"token": "b", "logprob": -2.0},
                                {"token": "a", "logprob": -0.2},
                            ],
                        }
                    ]
                },
            }
        ]
    }
    _, choices, _ = parse_response(data, chat=True)
    assert choices[0].tokens is not None
    assert choices[0].tokens[0].top == [("a", -0.2), ("b", -2.0)]
