"""What a strategy votes on, scores and selects: the answer's *kind*, chosen from the request.

- ``number``: a math-style final answer (``answers.extract_answer``), as every strategy
  has voted so far.
- ``json``: the response parsed as JSON (a fenced block is unwrapped), valid against
  the request's schema when it has one, compared in canonical form (sorted keys, no
  spaces), so ``{"b": 2, "a": 1}`` and ``{"a":1,"b":2}`` are one vote.
- ``tool_calls``: a hierarchical vote, after its_hub's ``tool_hierarchical`` self-
  consistency (Red Hat AI Innovation, its_hub): first whether to call a tool or answer,
  then which functions, then their canonical arguments; arguments named in
  ``exclude_args`` (timestamps, request ids) do not split the vote.
- ``text``: free text has no key to count. Universal Self-Consistency (Chen et al.,
  2023, arXiv:2311.17311) asks one model call to pick the response most consistent
  with the others; ``usc_messages`` writes that call and ``parse_usc_choice`` reads it.

Pure functions: no model calls, no I/O. A vote's ``levels`` are what the trace shows,
so a user can see why a response won.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import jsonschema

from strategies.protocol import Message, ToolCall
from strategies.shared.answers import extract_answer, parse_json_answer

KindName = Literal["number", "json", "tool_calls", "text"]
KINDS: tuple[KindName, ...] = ("number", "json", "tool_calls", "text")

_USC_CHOICE = re.compile(r"most consistent response is\s*\**\s*response\s*(\d+)", re.I)


@dataclass(frozen=True)
class Response:
    """One sampled response: its text and the function calls it makes (if any)."""

    text: str
    calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True)
class Level:
    """One round of a vote: the count of every key, and the key that won."""

    name: str
    counts: dict[str, int]
    chosen: str


@dataclass(frozen=True)
class Verdict:
    """The winning response (``index`` into the responses, None when none had a key)
    and the rounds that chose it, for the trace."""

    index: int | None
    key: str | None
    levels: list[Level] = field(default_factory=list)

    def trace(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "key": self.key,
            "levels": [
                {"name": x.name, "counts": x.counts, "chosen": x.chosen} for x in self.levels
            ],
        }


def canonical_json(value: Any) -> str:
    """One spelling per JSON value: sorted keys, no spaces, unicode kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class JsonAnswers:
    """Keys of JSON answers: canonical JSON when the text parses and validates.

    Args:
        schema: a JSON Schema (draft 2020-12) every answer must satisfy; None accepts
            any JSON value (``response_format: json_object``).

    Raises:
        ValueError: the schema itself is invalid (named in the message).

    Example:
        >>> JsonAnswers({"type": "object", "required": ["a"]}).key('{"b": 1, "a": 2}')
        '{"a":2,"b":1}'
    """

    def __init__(self, schema: dict[str, Any] | None = None) -> None:
        self.schema = schema
        self._validator: jsonschema.protocols.Validator | None = None
        if schema is not None:
            cls = jsonschema.validators.validator_for(schema, jsonschema.Draft202012Validator)
            try:
                cls.check_schema(schema)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"invalid JSON schema: {exc.message}") from exc
            self._validator = cls(schema)

    def problem(self, text: str) -> str | None:
        """Why ``text`` is not a valid answer, or None when it is."""
        try:
            value = parse_json_answer(text)
        except ValueError as exc:
            return f"not JSON: {exc}"
        if self._validator is not None:
            error = jsonschema.exceptions.best_match(self._validator.iter_errors(value))
            if error is not None:
                where = "/".join(str(p) for p in error.absolute_path) or "<root>"
                return f"{where}: {error.message}"
        return None

    def key(self, text: str) -> str | None:
        if self.problem(text) is not None:
            return None
        return canonical_json(parse_json_answer(text))


def text_key(text: str) -> str | None:
    """A loose key for short free-text answers: case and spacing do not split a vote."""
    key = " ".join(text.split()).casefold().rstrip(".")
    return key or None


def number_key(text: str) -> str | None:
    return extract_answer(text)


def majority(
    items: Iterable[tuple[int, str | None]], name: str
) -> tuple[str | None, list[int], Level | None]:
    """The most common key among (index, key) pairs (first seen wins ties), the indices
    holding it, and the round for the trace. Pairs without a key do not vote."""
    keyed = [(i, k) for i, k in items if k is not None]
    if not keyed:
        return None, [], None
    counts = Counter(k for _, k in keyed)
    best = max(counts.values())
    chosen = next(k for _, k in keyed if counts[k] == best)
    return chosen, [i for i, k in keyed if k == chosen], Level(name, dict(counts), chosen)


def vote(responses: Sequence[Response], key: Callable[[str], str | None]) -> Verdict:
    """A plain majority over ``key(text)`` (number, JSON and short text answers)."""
    keys = ((i, key(r.text)) for i, r in enumerate(responses))
    chosen, holders, level = majority(keys, "answer")
    return Verdict(holders[0] if holders else None, chosen, [level] if level else [])


def call_arguments(call: ToolCall, exclude: frozenset[str] = frozenset()) -> str | None:
    """A call's arguments in canonical JSON without the excluded keys; None when they are
    not a JSON object (such a call cannot be executed, so it never wins)."""
    try:
        value = json.loads(call.arguments or "{}")
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    return canonical_json({k: v for k, v in value.items() if k not in exclude})


def vote_tool_calls(
    responses: Sequence[Response],
    *,
    answer_key: Callable[[str], str | None] = text_key,
    exclude_args: Iterable[str] = (),
) -> Verdict:
    """The hierarchical vote: call a tool or answer; then which functions; then their
    arguments (canonical, ``exclude_args`` left out). Responses whose calls cannot be
    executed (arguments not a JSON object) do not vote. Calls made together are
    compared as a set: their order does not split a vote.

    Example:
        >>> call = lambda a: Response("", (ToolCall(name="add", arguments=a),))
        >>> vote_tool_calls([call('{"x": 1}'), call('{"x":1}'), Response("2")]).index
        0
    """
    exclude = frozenset(exclude_args)
    acts: dict[int, tuple[str, ...]] = {}
    for i, r in enumerate(responses):
        if r.calls:
            args = [call_arguments(c, exclude) for c in r.calls]
            if all(a is not None for a in args):
                named = (f"{c.name}({a})" for c, a in zip(r.calls, args, strict=True))
                acts[i] = tuple(sorted(named))
    answers = {i: answer_key(r.text) for i, r in enumerate(responses) if not r.calls}
    voters = sorted(
        [(i, "call") for i in acts] + [(i, "answer") for i, k in answers.items() if k is not None]
    )
    mode, _, first = majority(voters, "call_or_answer")
    if mode is None or first is None:
        return Verdict(None, None)
    if mode == "answer":
        chosen, holders, level = majority(answers.items(), "answer")
        return Verdict(holders[0], chosen, [first, *([level] if level else [])])
    names = {i: ",".join(sorted(c.name for c in responses[i].calls)) for i in acts}
    _, holders, by_name = majority(sorted(names.items()), "functions")
    chosen, winners, by_args = majority(((i, "+".join(acts[i])) for i in holders), "arguments")
    assert by_name is not None and by_args is not None  # every acting response has a key
    return Verdict(winners[0], chosen, [first, by_name, by_args])


def usc_messages(question: str, responses: Sequence[str]) -> list[Message]:
    """The Universal Self-Consistency selection call (Chen et al., 2023, Fig. 2): the
    responses numbered from 0, and the instruction to name the most consistent one."""
    listed = "\n\n".join(f"Response {i}:\n{text.strip()}" for i, text in enumerate(responses))
    return [
        {
            "role": "user",
            "content": (
                f"I have generated the following responses to the question: {question}\n\n"
                f"{listed}\n\n"
                "Evaluate these responses.\n"
                "Select the most consistent response based on majority consensus.\n"
                'Start your answer with "The most consistent response is Response X" '
                "(without quotes)."
            ),
        }
    ]


def parse_usc_choice(text: str, count: int) -> int | None:
    """The response index the selection call named, or None when it named none in range."""
    found = _USC_CHOICE.search(text)
    if found is None:
        return None
    index = int(found.group(1))
    return index if 0 <= index < count else None
