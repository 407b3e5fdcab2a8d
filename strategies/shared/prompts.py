"""Prompt texts shared by strategies. Kept short: on CPU every prompt token costs time."""

from __future__ import annotations

from strategies.protocol import Message

SOLVE_SYSTEM = (
    "You are a careful problem solver. Reason step by step, briefly. "
    "Finish with a line of the form 'The answer is N.'"
)


def solve_messages(problem: str, system: str | None = None) -> list[Message]:
    return [
        {"role": "system", "content": system or SOLVE_SYSTEM},
        {"role": "user", "content": problem},
    ]
