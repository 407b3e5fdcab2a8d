"""Eval datasets: JSON Lines with ``id``, ``question`` and ``answer`` per line.

Every line is checked before anything runs, so a bad file is reported in full, with
line numbers, instead of failing on problem 317 an hour in. Blank lines are ignored;
``id`` is optional (``line-N`` when absent); ``answer`` may be a string or a number
(GSM8K stores the final number as a string).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from strategies.shared.answers import normalize_answer


@dataclass(frozen=True)
class Problem:
    index: int
    """Position among the valid problems (0-based): the eval's seed offset."""
    id: str
    question: str
    answer: str
    line: int


@dataclass(frozen=True)
class BadLine:
    line: int
    reason: str


@dataclass
class Dataset:
    path: Path
    problems: list[Problem]
    bad_lines: list[BadLine] = field(default_factory=list)
    sha256: str = ""


def _check(record: Any, seen_ids: set[str], line: int) -> Problem | str:
    """The problem on one line, or why the line is bad."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    question, answer, raw_id = record.get("question"), record.get("answer"), record.get("id")
    if "question" not in record:
        return "missing 'question'"
    if not isinstance(question, str) or not question.strip():
        return f"'question' must be a non-empty string, got {_shown(question)}"
    if "answer" not in record:
        return "missing 'answer'"
    if isinstance(answer, bool) or not isinstance(answer, str | int | float):
        return f"'answer' must be a string or a number, got {_shown(answer)}"
    if normalize_answer(str(answer)) is None:
        return "'answer' is empty"
    if raw_id is not None and (isinstance(raw_id, bool) or not isinstance(raw_id, str | int)):
        return f"'id' must be a string or an integer, got {_shown(raw_id)}"
    problem_id = str(raw_id) if raw_id is not None else f"line-{line}"
    if problem_id in seen_ids:
        return f"duplicate id {problem_id!r}"
    return Problem(index=-1, id=problem_id, question=question, answer=str(answer), line=line)


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    return f"{type(value).__name__} {json.dumps(value)[:40]}"


def load_dataset(path: Path, limit: int | None = None) -> Dataset:
    """Parse and check every line; keep the first ``limit`` valid problems.

    Raises:
        OSError: the file cannot be read.
        UnicodeDecodeError: the file is not UTF-8.
    """
    raw = path.read_bytes()
    problems: list[Problem] = []
    bad: list[BadLine] = []
    seen: set[str] = set()
    for number, text in enumerate(raw.decode("utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            bad.append(BadLine(number, f"not valid JSON ({exc.msg}, column {exc.colno})"))
            continue
        checked = _check(record, seen, number)
        if isinstance(checked, str):
            bad.append(BadLine(number, checked))
            continue
        seen.add(checked.id)
        problems.append(
            Problem(len(problems), checked.id, checked.question, checked.answer, number)
        )
    if limit is not None:
        problems = problems[:limit]
    return Dataset(path, problems, bad, hashlib.sha256(raw).hexdigest())
