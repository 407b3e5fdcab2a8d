"""The simulator's script: which replies it gives, how slowly, and when it fails.

Every model forbids unknown keys, so a typo in a script file (``"replys"``) fails
at load time with the field's path instead of silently giving the default reply.
Regexes are compiled at validation time for the same reason.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_regex(pattern: str | None) -> str | None:
    if pattern is not None:
        try:
            re.compile(pattern, re.S)
        except re.error as exc:
            raise ValueError(f"invalid regex {pattern!r}: {exc}") from exc
    return pattern


class Latency(_Strict):
    """How long a request takes; see docs/simulator.md for the formula."""

    ttft_ms: float = Field(default=0.0, ge=0)
    """Fixed time before the first token (queueing, scheduling)."""
    per_token_ms: float = Field(default=0.0, ge=0)
    """Decode time per generated token (one decode step)."""
    prompt_per_token_ms: float = Field(default=0.0, ge=0)
    """Prefill time per prompt token."""
    concurrency_slowdown: float = Field(default=0.0, ge=0)
    """Decode steps take ``1 + x * (other requests running)`` times longer."""
    batch_n: bool = True
    """The ``n`` choices of one request decode together, as in vLLM (wall time is that
    of the longest choice); False decodes them one after another (sum of choices)."""


class ScriptedToolCall(_Strict):
    """A function call a scripted reply makes (see ``Rule.tool_calls``)."""

    name: str = Field(min_length=1)
    arguments: dict[str, Any] | str = Field(default_factory=dict)
    """An object is sent as its JSON text; a string is sent as it is, so a script can
    play a model that writes arguments which are not valid JSON."""


class Rule(_Strict):
    """A scripted reply for requests whose prompt text matches ``match``."""

    match: str = ""
    """Regex searched (``re.S``) in the prompt text; "" matches every request."""
    model: str | None = None
    """Only requests naming this model match."""
    replies: list[str] = Field(min_length=1)
    pick: Literal["cycle", "seed", "first"] = "cycle"
    """cycle: a per-rule counter advances once per generated choice (and persists
    across requests until reset); seed: index = stable hash(seed, choice index) when
    the request carries a seed, else cycle; first: always ``replies[0]``."""
    token_logprob: float = Field(default=-0.05, le=0)
    """Logprob reported for every sampled token."""
    reply_logprobs: list[float] | None = None
    """Per reply (same length as ``replies``): the logprob of every token of that reply,
    replacing ``token_logprob`` — so path probabilities differ between replies."""
    first_token_entropy: float | None = Field(default=None, ge=0)
    """Nats. When set, the first token's top alternatives are shaped so that the
    distribution over them, normalised, has exactly this entropy."""
    finish_reason: str = "stop"
    """Reported when neither ``stop`` nor ``max_tokens`` cut the reply."""
    latency: Latency | None = None
    """Overrides the global latency for matching requests."""
    tool_calls: list[list[ScriptedToolCall]] | None = None
    """Per reply (same length as ``replies``): the function calls that reply makes when
    the request offers ``tools`` (and ``tool_choice`` is not "none"); [] makes none. A
    reply with calls answers with ``message.tool_calls``, the reply's text as content
    (null when ""), and finish_reason "tool_calls". Without ``tools`` in the request
    the reply is its text alone, as a real model cannot call what it was not given."""

    reasoning: str | None = None
    """Reasoning the model shows apart from its answer, as vLLM's reasoning parser and
    llama.cpp do: chat replies carry it as ``message.reasoning_content`` (streamed as
    ``delta.reasoning_content`` before the answer), counted in ``completion_tokens`` and
    in ``usage.completion_tokens_details.reasoning_tokens``. It is decoded first and
    shares ``max_tokens`` with the answer. Not on a continued assistant message."""
    reasoning_usage: bool = True
    """False: send the reasoning text without its count in ``completion_tokens_details``
    (as llama.cpp does), so a client must estimate it."""

    @field_validator("match")
    @classmethod
    def _valid_regex(cls, pattern: str) -> str:
        _check_regex(pattern)
        return pattern

    @model_validator(mode="after")
    def _one_logprob_per_reply(self) -> Rule:
        if self.reply_logprobs is not None:
            if len(self.reply_logprobs) != len(self.replies):
                raise ValueError("reply_logprobs must have one entry per reply")
            if any(lp > 0 for lp in self.reply_logprobs):
                raise ValueError("reply_logprobs must be <= 0")
        if self.tool_calls is not None and len(self.tool_calls) != len(self.replies):
            raise ValueError("tool_calls must have one entry (a list of calls) per reply")
        return self


class Failure(_Strict):
    """An injected fault: the first ``times`` matching requests fail."""

    kind: Literal["status", "disconnect", "hang"] = "status"
    """status: an OpenAI-style error; disconnect: the connection is closed without a
    response; hang: no answer until the client gives up (at most 60 s)."""
    status: int = Field(default=500, ge=400, le=599)
    times: int = Field(default=1, ge=0)
    match: str | None = None
    """Regex on the prompt text; None fails any request."""
    retry_after_s: float | None = Field(default=None, ge=0)
    """Sent as a ``Retry-After`` header (use with 429 or 503)."""

    @field_validator("match")
    @classmethod
    def _valid_regex(cls, pattern: str | None) -> str | None:
        return _check_regex(pattern)


class SimulatorConfig(_Strict):
    """The whole script. Requests for any model name are accepted."""

    models: list[str] = Field(default_factory=lambda: ["sim"], min_length=1)
    """Names listed by ``/v1/models``."""
    rules: list[Rule] = Field(default_factory=list)
    """The first matching rule wins; no match gives ``default_reply``."""
    default_reply: str = "The answer is 42."
    latency: Latency = Field(default_factory=Latency)
    failures: list[Failure] = Field(default_factory=list)
    max_n: int | None = Field(default=None, ge=1)
    """Requests with a larger ``n`` get a 400 naming ``n`` (llama.cpp's slot limit)."""
    max_running: int | None = Field(default=None, ge=1)
    """Requests beyond this many wait in a queue (``vllm:num_requests_waiting``)."""
    completions_logprobs_layout: Literal["legacy", "chat"] = "legacy"
    """vLLM answers ``/v1/completions`` in the legacy layout; llama.cpp in the chat one."""


def load_config(path: Path) -> SimulatorConfig:
    """Read a JSON script file.

    Raises:
        ConfigError: the file is missing, is not JSON, or does not validate; the
            message names the file and every offending field.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read simulator script {path}: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"simulator script {path} is not valid JSON: {exc}") from exc
    try:
        return SimulatorConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid simulator script {path}: {problems}") from exc
