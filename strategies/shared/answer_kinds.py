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
from typing import TYPE_CHECKING, Any

from strategies.protocol import (
    ANSWER_KINDS,
    AnswerKind,
    Choice,
    Conversation,
    Message,
    ToolCall,
)
from strategies.shared.answers import extract_answer, parse_json_answer

if TYPE_CHECKING:
    import jsonschema

KindName = AnswerKind
KINDS = ANSWER_KINDS

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
        # Imported here, not at module load: every process loads the strategies at
        # start-up, and only JSON answers need a validator (~20 ms of imports).
        import jsonschema

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
            from jsonschema.exceptions import best_match

            error = best_match(self._validator.iter_errors(value))
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


def response_of(choice: Choice) -> Response:
    return Response(choice.text, tuple(choice.tool_calls or ()))


def calls_key(calls: Sequence[ToolCall]) -> str | None:
    """Calls made together in canonical form, as the hierarchical vote's last level
    compares them: ``add({"x":1})+mul({"y":2})`` (sorted; None if one cannot run)."""
    args = [call_arguments(c) for c in calls]
    if any(a is None for a in args):
        return None
    return "+".join(sorted(f"{c.name}({a})" for c, a in zip(calls, args, strict=True)))


@dataclass(frozen=True)
class Answers:
    """The answer kind a conversation asks for, as one object: the key a response
    votes with, and the reason it has none.

    Example:
        >>> Answers.of(Conversation.of_question("2+2?")).key(Response("The answer is 4."))
        '4'
    """

    kind: KindName
    json: JsonAnswers | None = None

    @classmethod
    def of(cls, conversation: Conversation) -> Answers:
        if conversation.answer_kind == "json":
            return cls("json", JsonAnswers(conversation.answer_schema))
        return cls(conversation.answer_kind)

    def key(self, response: Response) -> str | None:
        """What the response votes for; None when it has no answer of this kind. A
        tool-call response votes ``call:<calls>``, a plain one ``answer:<text>``; the
        hierarchical vote (``vote_tool_calls``) decides among them in levels."""
        if self.kind == "tool_calls":
            if response.calls:
                calls = calls_key(response.calls)
                return None if calls is None else f"call:{calls}"
            text = text_key(response.text)
            return None if text is None else f"answer:{text}"
        if self.kind == "json":
            assert self.json is not None
            return self.json.key(response.text)
        if self.kind == "text":
            return text_key(response.text)
        return number_key(response.text)

    def answer(self, response: Response) -> str | None:
        """The job's ``answer`` for a response: its number, its canonical JSON, its calls
        in canonical form, or its whole text."""
        if self.kind == "text":
            return response.text.strip() or None
        if self.kind == "tool_calls" and not response.calls:
            return response.text.strip() or None
        if self.kind == "tool_calls":
            return calls_key(response.calls)
        return self.key(response)

    def problem(self, response: Response) -> str | None:
        """Why a response has no answer of this kind (for the trace), or None."""
        if self.kind == "json" and self.json is not None:
            return self.json.problem(response.text)
        if self.key(response) is None:
            return f"no {self.kind} answer"
        return None
