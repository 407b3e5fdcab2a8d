"""Final-answer extraction and normalisation, shared by every strategy that votes or grades.

Models state answers in many ways: ``\\boxed{18}``, ``#### 18``, ``The answer is $18.00``,
``**Answer:** 18``, or just a last number. Extraction tries the explicit forms first
(most specific wins) and falls back to the last number in the text. Normalisation maps
equivalent spellings to one key so that votes count them together: ``18``, ``18.0``,
``$18``, ``18.00`` and ``1,8`` (no: commas are thousands separators, ``1,800`` -> ``1800``).
"""

from __future__ import annotations

import json
import re
from fractions import Fraction
from typing import Any

_BOXED = re.compile(r"\\boxed\s*\{")
_HASHES = re.compile(r"####\s*([^\n]+)")
_ANSWER_IS = re.compile(
    r"(?:final answer|the answer|answer)\s*(?:is|:|=)?\s*:?\s*\**\s*([^\n]+)",
    re.IGNORECASE,
)
_NUMBER = re.compile(r"-?\$?\s?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?")
_FENCE = re.compile(r"^\s*```[a-zA-Z]*\s*\n(.*?)\n?```\s*$", re.S)
_CHOICE = re.compile(r"^\(?([A-Ea-e])\)?[.)]?$")


def _boxed_contents(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}``, with nested braces balanced."""
    found = []
    for match in _BOXED.finditer(text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    found.append(text[start:i])
                    break
    return found


def extract_answer(text: str) -> str | None:
    """The final answer stated in ``text``, normalised, or None if there is none."""
    boxed = _boxed_contents(text)
    if boxed:
        return normalize_answer(boxed[-1])
    hashes = _HASHES.findall(text)
    if hashes:
        return normalize_answer(hashes[-1])
    stated = _ANSWER_IS.findall(text)
    for candidate in reversed(stated):
        normal = normalize_answer(candidate)
        if normal:
            return normal
    numbers = _NUMBER.findall(text)
    if numbers:
        return normalize_answer(numbers[-1])
    return None


def _as_number(text: str) -> str | None:
    cleaned = text.replace("$", "").replace(",", "").replace(" ", "")
    cleaned = cleaned.rstrip(".")
    try:
        value = Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None
    if value.denominator == 1:
        return str(value.numerator)
    as_float = float(value)
    # Keep exact decimals exact (0.25), and round long expansions (1/3) to 6 places.
    text_value = f"{as_float:.6f}".rstrip("0").rstrip(".")
    return text_value


def normalize_answer(raw: str) -> str | None:
    """One canonical key per answer: numbers as plain decimals, choices as a capital letter.

    >>> normalize_answer("$1,800.00")
    '1800'
    >>> normalize_answer("**(b)**")
    'B'
    """
    text = raw.strip()
    text = re.sub(r"\\text\{([^}]*)\}", r"\1", text)
    text = text.replace("\\$", "$").replace("\\%", "%").replace("**", "").strip()
    text = text.strip(" .;:*`")
    if not text:
        return None
    choice = _CHOICE.match(text)
    if choice:
        return choice.group(1).upper()
    direct = _as_number(text.rstrip("%"))
    if direct is not None:
        return direct
    # "18 dollars", "x = 18", "18 apples." -> the first number in a short stated answer.
    numbers = _NUMBER.findall(text)
    if numbers:
        return _as_number(numbers[0])
    return " ".join(text.lower().split())


def answers_equal(a: str | None, b: str | None) -> bool:
    """Equivalence used for grading: equal normalised keys, or equal numbers within 1e-6."""
    if a is None or b is None:
        return False
    na, nb = normalize_answer(a), normalize_answer(b)
    if na == nb:
        return na is not None
    try:
        return abs(float(na or "") - float(nb or "")) <= 1e-6 * max(1.0, abs(float(nb or "")))
    except ValueError:
        return False


def parse_json_answer(text: str) -> Any:
    """The JSON value ``text`` holds (a whole-text fenced block is unwrapped).

    Raises:
        ValueError: the text is not one JSON value.
    """
    fenced = _FENCE.match(text)
    return json.loads(fenced.group(1) if fenced else text)
