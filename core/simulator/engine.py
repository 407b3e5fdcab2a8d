"""What the simulator says and how long it takes: pure logic, no I/O.

Tokenisation is deliberately crude and fully documented, so a test can predict token
counts by eye: a token is a word with its leading whitespace, one punctuation
character with its leading whitespace, or trailing whitespace (``PIECE``).
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.simulator.config import Failure, Latency, Rule, SimulatorConfig

PIECE = re.compile(r"\s*\w+|\s*[^\w\s]|\s+")
MIN_LOGPROB = -9999.0
"""What vLLM reports for a probability that underflows; JSON has no -inf."""
_MASK64 = (1 << 64) - 1


def tokenize(text: str) -> list[str]:
    """Split text into pieces that concatenate back to exactly ``text``."""
    return PIECE.findall(text)


def content_text(content: Any) -> str:
    """A chat message's text: a string, or the text parts of a content-part list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content)


def chat_prompt_text(messages: Sequence[dict[str, Any]]) -> str:
    """The text rules match for a chat request: one ``role: content`` line per message,
    an assistant's tool calls appended to its line as `` -> name(arguments)``."""
    return "\n".join(_message_line(m) for m in messages)


def _message_line(message: dict[str, Any]) -> str:
    line = f"{message['role']}: {content_text(message.get('content'))}"
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            line += f" -> {function.get('name')}({function.get('arguments')})"
    return line


def stable_index(seed: int, choice: int, size: int) -> int:
    """splitmix64 of (seed, choice): the same on every run and every platform."""
    x = (seed * 0x9E3779B97F4A7C15 + choice + 1) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (x ^ (x >> 31)) % size


@dataclass(frozen=True, slots=True)
class SampleParams:
    n: int = 1
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None
    top: int | None = None
    """Entries per token in ``top_logprobs``; None when logprobs were not requested."""
    prefill: str = ""
    """A trailing assistant message the reply continues (only the new part is returned)."""
    tools: bool = False
    """The request offers tools (and does not set ``tool_choice`` to "none")."""
    chat: bool = False
    """A chat request: a rule's ``reasoning`` is returned apart (completions have none)."""


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token: str
    logprob: float
    top: list[tuple[str, float]]


@dataclass(frozen=True, slots=True)
class CallOut:
    """A function call as a choice makes it: the name and the arguments' text."""

    name: str
    arguments: str

    @property
    def tokens(self) -> int:
        return len(tokenize(self.name)) + len(tokenize(self.arguments))


@dataclass(frozen=True, slots=True)
class Sample:
    """One generated choice."""

    text: str
    tokens: list[str]
    finish_reason: str
    logprobs: list[TokenLogprob] | None
    tool_calls: tuple[CallOut, ...] = ()
    reasoning: str = ""
    """Decoded before ``text`` and returned apart (``reasoning_content``)."""
    reasoning_tokens: tuple[str, ...] = ()
    reasoning_reported: bool = True
    """Whether ``usage.completion_tokens_details.reasoning_tokens`` counts it."""

    @property
    def completion_tokens(self) -> int:
        calls = sum(call.tokens for call in self.tool_calls)
        return len(self.reasoning_tokens) + len(self.tokens) + calls


class Engine:
    """One script's rules and failures with their counters.

    The server calls it from its event loop while tests reset it from their own
    thread, hence the lock around every counter.
    """

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self._rules = [(re.compile(r.match, re.S) if r.match else None, r) for r in config.rules]
        self._failures = [
            (re.compile(f.match, re.S) if f.match is not None else None, f) for f in config.failures
        ]
        self._lock = threading.Lock()
        self._cycle = [0] * len(self._rules)
        self._failed = [0] * len(self._failures)

    def reset(self) -> None:
        with self._lock:
            self._cycle = [0] * len(self._rules)
            self._failed = [0] * len(self._failures)

    def rule_for(self, prompt: str, model: str) -> tuple[int, Rule] | None:
        for i, (pattern, rule) in enumerate(self._rules):
            if rule.model is not None and rule.model != model:
                continue
            if pattern is None or pattern.search(prompt):
                return i, rule
        return None

    def failure_for(self, prompts: Sequence[str]) -> Failure | None:
        """The first failure entry with fails left that matches any prompt; consumes one."""
        for i, (pattern, failure) in enumerate(self._failures):
            if pattern is not None and not any(pattern.search(p) for p in prompts):
                continue
            with self._lock:
                if self._failed[i] < failure.times:
                    self._failed[i] += 1
                    return failure
        return None

    def latency_for(self, prompt: str, model: str) -> Latency:
        found = self.rule_for(prompt, model)
        if found is not None and found[1].latency is not None:
            return found[1].latency
        return self.config.latency

    def sample(self, prompt: str, model: str, params: SampleParams) -> list[Sample]:
        """The ``n`` choices for one prompt."""
        found = self.rule_for(prompt, model)
        if found is None:
            return [_finish(self.config.default_reply, params, None)] * params.n
        i, rule = found
        size = len(rule.replies)
        if rule.pick == "first":
            picks = [0] * params.n
        elif rule.pick == "seed" and params.seed is not None:
            picks = [stable_index(params.seed, j, size) for j in range(params.n)]
        else:
            with self._lock:
                start = self._cycle[i]
                self._cycle[i] += params.n
            picks = [(start + j) % size for j in range(params.n)]
        return [_finish(rule.replies[k], params, rule, k) for k in picks]


def _finish(reply: str, params: SampleParams, rule: Rule | None, pick: int = 0) -> Sample:
    """Apply continuation, ``stop`` and ``max_tokens`` to a scripted reply."""
    text = reply
    if params.prefill and text.startswith(params.prefill):
        text = text[len(params.prefill) :]
    finish = rule.finish_reason if rule is not None else "stop"
    thought: list[str] = []
    if rule is not None and rule.reasoning and params.chat and not params.prefill:
        # Reasoning is decoded first and shares max_tokens with the answer (vLLM).
        thought = tokenize(rule.reasoning)[: params.max_tokens]
    room = params.max_tokens - len(thought)
    cuts = [at for at in (text.find(s) for s in params.stop) if at >= 0]
    if cuts:
        text, finish = text[: min(cuts)], "stop"
    tokens = tokenize(text)
    if len(tokens) > room:
        tokens = tokens[:room]
        text, finish = "".join(tokens), "length"
    logprobs = None
    if params.top is not None:
        logprob = rule.token_logprob if rule is not None else -0.05
        if rule is not None and rule.reply_logprobs is not None:
            logprob = rule.reply_logprobs[pick]
        entropy = rule.first_token_entropy if rule is not None else None
        logprobs = token_logprobs(tokens, logprob, params.top, entropy)
    calls = _calls(rule, pick) if params.tools else ()
    if calls:
        finish = "tool_calls"
    reported = rule.reasoning_usage if rule is not None else True
    return Sample(text, tokens, finish, logprobs, calls, "".join(thought), tuple(thought), reported)


def _calls(rule: Rule | None, pick: int) -> tuple[CallOut, ...]:
    if rule is None or rule.tool_calls is None:
        return ()
    return tuple(
        CallOut(
            call.name,
            call.arguments
            if isinstance(call.arguments, str)
            else json.dumps(call.arguments, separators=(",", ":")),
        )
        for call in rule.tool_calls[pick]
    )


def _log(p: float) -> float:
    return max(math.log(p), MIN_LOGPROB) if p > 0 else MIN_LOGPROB


def shaped_distribution(entropy: float, k: int) -> list[float]:
    """``k`` probabilities, the first the largest and the rest equal, with this entropy.

    Entropy falls monotonically from ``ln k`` (uniform) to 0 as the first probability
    rises from ``1/k`` to 1, so bisection finds it; targets above ``ln k`` give uniform.
    """
    if k < 2:
        return [1.0]
    if entropy >= math.log(k):
        return [1.0 / k] * k

    def h(p0: float) -> float:
        q = (1.0 - p0) / (k - 1)
        return -p0 * math.log(p0) - ((1.0 - p0) * math.log(q) if q > 0 else 0.0)

    lo, hi = 1.0 / k, 1.0
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if h(mid) > entropy else (lo, mid)
    p0 = (lo + hi) / 2
    return [p0] + [(1.0 - p0) / (k - 1)] * (k - 1)


def _named(token: str, logprobs: list[float]) -> list[tuple[str, float]]:
    """Pair logprobs with the sampled token then made-up alternatives ``<alt1>``..."""
    if not logprobs:
        return []
    names: list[str] = []
    j = 0
    while len(names) < len(logprobs) - 1:
        j += 1
        if f"<alt{j}>" != token:
            names.append(f"<alt{j}>")
    return list(zip([token, *names], logprobs, strict=True))


def _alternative_logprobs(logprob: float, count: int) -> list[float]:
    """Lower logprobs that, where possible, leave the total probability below 1."""
    rest = _log(1.0 - math.exp(logprob))
    return [
        max(min(rest - j * math.log(2), logprob - 0.1 * j), MIN_LOGPROB)
        for j in range(1, count + 1)
    ]


def token_logprobs(
    tokens: list[str], logprob: float, top: int, first_entropy: float | None
) -> list[TokenLogprob]:
    out = []
    for i, token in enumerate(tokens):
        if i == 0 and first_entropy is not None:
            shaped = [_log(p) for p in shaped_distribution(first_entropy, max(top, 2))]
            out.append(TokenLogprob(token, shaped[0], _named(token, shaped)))
        else:
            lps = [logprob, *_alternative_logprobs(logprob, top - 1)] if top > 0 else []
            out.append(TokenLogprob(token, logprob, _named(token, lps)))
    return out


def prefill_seconds(latency: Latency, prompt_tokens: int) -> float:
    return (latency.ttft_ms + prompt_tokens * latency.prompt_per_token_ms) / 1000.0


def step_seconds(latency: Latency, others_running: int) -> float:
    """One decode step, slowed by the other requests sharing the server."""
    return latency.per_token_ms / 1000.0 * (1.0 + latency.concurrency_slowdown * others_running)


def decode_steps(latency: Latency, counts: Sequence[int]) -> int:
    """Batched choices cost the longest one; sequential choices cost their sum."""
    return max(counts, default=0) if latency.batch_n else sum(counts)


def stream_order(latency: Latency, counts: Sequence[int]) -> list[list[tuple[int, int]]]:
    """Decode steps as lists of (choice, token index) emitted together."""
    if latency.batch_n:
        return [
            [(c, t) for c, count in enumerate(counts) if t < count]
            for t in range(max(counts, default=0))
        ]
    return [[(c, t)] for c, count in enumerate(counts) for t in range(count)]


def is_instant(latency: Latency) -> bool:
    return not (latency.ttft_ms or latency.per_token_ms or latency.prompt_per_token_ms)
