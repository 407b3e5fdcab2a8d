"""``ponder bench --peers``' OpenAI-wire rows: how they read, without running a bench."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from bench.peers import openai_wire


def _row(name: str, p50: float) -> dict[str, object]:
    return {
        "name": name,
        "label": name,
        "p50_ms": p50,
        "p99_ms": p50 * 2,
        "p50_over_raw_ms": p50 - 1,
        "p99_over_raw_ms": p50 * 2 - 2,
    }


def test_litellm_missing_is_a_skipped_peer(tmp_path: Path) -> None:
    with (
        pytest.raises(openai_wire.Skipped, match="litellm not installed in"),
        openai_wire.litellm_proxy("http://127.0.0.1:9", tmp_path, venv=tmp_path / "none"),
    ):
        pass


def test_rows_say_which_peer_was_skipped_and_keep_ponders() -> None:
    result = {
        "requests": 200,
        "journaled_call": {"calls": 2000, "p50_over_raw_ms": 1.15, "p99_over_raw_ms": 1.73},
        "litellm_sdk_call": {"skipped": "litellm not installed"},
        "rows": [
            _row("raw", 1.0),
            {"name": "litellm", "label": "LiteLLM", "skipped": "litellm not installed"},
            _row("serve", 105.8),
            {"name": "postgres", "label": "PG", "skipped": "OperationalError: refused"},
        ],
    }
    text = "\n".join(openai_wire.table_lines(result))
    assert text.count("peer skipped: litellm not installed") == 3
    assert "+1.15 ms" in text and "+1.73 ms" in text
    assert "105.80 (+104.80)" in text
    assert "skipped: OperationalError: refused" in text


def test_a_failing_target_leaves_the_rotation_and_the_others_are_measured() -> None:
    answer = {"choices": [{"message": {"role": "assistant", "content": "5"}}]}

    def reply(request: httpx.Request) -> httpx.Response:
        if request.url.host == "broken":
            return httpx.Response(504, json={"error": {"code": "job_timeout"}})
        return httpx.Response(200, json=answer)

    targets = [
        openai_wire.Target("raw", "raw", "http://sim", "sim"),
        openai_wire.Target("serve", "serve", "http://broken", "ponder/direct"),
    ]
    with httpx.Client(transport=httpx.MockTransport(reply)) as http:
        samples, failed = openai_wire.interleaved(http, targets, requests=5, warmup=2)
    assert len(samples["raw"]) == 5
    assert samples["serve"] == []
    assert failed["serve"].startswith("failed at request 1: Server error '504")
