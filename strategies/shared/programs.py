"""Programs as answers: the prompt that asks for one, reading it out of a reply, and
reading the answer a run printed. Shared by ``program_of_thought`` and by the strategies
that vote or score on executed programs (``self_consistency`` with ``executor``)."""

from __future__ import annotations

import re

from strategies.shared.answers import extract_answer

PROGRAM_SYSTEM = (
    "Solve the problem by writing a short Python 3 program that computes the answer and "
    "prints it as the last line, a bare number. Use only the standard library. Reply with "
    "the whole program in one ```python block and nothing else."
)
_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|\Z)", re.S | re.I)


def program_of(text: str) -> str:
    """The program in a reply: its first fenced block, or the whole reply when unfenced."""
    found = _BLOCK.search(text)
    return (found.group(1) if found else text).strip()


def answer_of(output: str) -> str | None:
    """The answer a program printed: the number on its last non-empty line (or in it)."""
    lines = [line for line in output.splitlines() if line.strip()]
    return extract_answer(lines[-1]) if lines else None
