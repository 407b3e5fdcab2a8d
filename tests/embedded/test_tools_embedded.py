"""Tools, structured output and a two-turn conversation on the real embedded large model
(Qwen2.5-Coder-1.5B on llama.cpp), through ``ponder serve`` and the ``openai`` SDK, as
an app or an agent framework would use Ponder in place of a model.

llama.cpp's server applies the model's own chat template (jinja, on in the embedded
host), and this model writes a forced call as JSON in its content rather than in
``tool_calls``: the pool client reads it back as a call (``core.pools.tool_text``).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from openai import OpenAI

from core.embedded.manager import EmbeddedModels
from core.settings import EmbeddedSettings
from tests.embedded.test_embedded_models import models_dir, require_xllamacpp
from tests.fixtures.processes import free_port, wait_healthy
from tests.integration.test_serve import base_env

ROOT = Path(__file__).resolve().parents[2]
LARGE = {"ponder": {"strategy": {"role": "large", "max_tokens": 128}}}
WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}

pytestmark = [pytest.mark.embedded, pytest.mark.slow]


@pytest.fixture(scope="module")
def openai_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenAI]:
    require_xllamacpp()
    tmp = tmp_path_factory.mktemp("tools-embedded")
    settings = EmbeddedSettings(roles=["large"], threads=2, slots=2, context=4096)
    with EmbeddedModels(settings, models_dir()) as models:
        env = base_env(tmp)
        pool = models.pools["large"]
        env["PONDER_POOLS__LARGE__ENDPOINTS"] = json.dumps(pool.endpoints)
        env["PONDER_POOLS__LARGE__KIND"] = pool.kind
        env["PONDER_POOLS__LARGE__MODEL"] = pool.model
        port = free_port()
        log_path = tmp / "serve.log"
        argv = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
        with log_path.open("wb") as log:
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                wait_healthy(f"http://127.0.0.1:{port}/healthz", proc, log_path)
                yield OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)


def test_a_forced_function_comes_back_as_a_tool_call_whose_arguments_parse(
    openai_client: OpenAI,
) -> None:
    completion = openai_client.chat.completions.create(  # type: ignore[call-overload]
        model="ponder/direct",
        messages=[{"role": "user", "content": "What is the weather like in Paris today?"}],
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        extra_body=LARGE,
    )
    (choice,) = completion.choices
    assert choice.finish_reason == "tool_calls", choice.message
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert "paris" in str(arguments.get("city", "")).lower(), arguments


def test_a_json_schema_answer_parses_and_validates(openai_client: OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
    }
    completion = openai_client.chat.completions.create(  # type: ignore[call-overload]
        model="ponder/direct",
        messages=[{"role": "user", "content": "Name the capital of France and its country."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "capital", "schema": schema},
        },
        extra_body=LARGE,
    )
    content = completion.choices[0].message.content or ""
    value = json.loads(content)
    jsonschema.validate(value, schema)
    assert "paris" in value["city"].lower()


def test_the_answer_to_the_second_turn_depends_on_the_first(openai_client: OpenAI) -> None:
    # Greedy, this model carries 17 into the second turn but slips on the arithmetic
    # ("21 + 3 = 24", seen 2026-12-05): a vote over five samples is what a user would run.
    completion = openai_client.chat.completions.create(
        model="ponder/self_consistency",
        messages=[
            {"role": "user", "content": "My number is 17."},
            {"role": "assistant", "content": "Got it: your number is 17."},
            {"role": "user", "content": "What is my number times 3?"},
        ],
        extra_body={"ponder": {"strategy": {"role": "large", "n": 5, "max_tokens": 160}}},
        seed=1,
    )
    assert completion.model_extra is not None
    ponder = completion.model_extra["ponder"]
    assert ponder["answer"] == "51", ponder["votes"]
