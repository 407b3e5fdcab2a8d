"""Prompt texts shared by strategies. Kept short: on CPU every prompt token costs time."""

from __future__ import annotations

from strategies.protocol import Conversation, Message, message_text

SOLVE_SYSTEM = (
    "You are a careful problem solver. Reason step by step, briefly. "
    "Finish with a line of the form 'The answer is N.'"
)


def solve_messages(
    problem: str, system: str | None = None, conversation: Conversation | None = None
) -> list[Message]:
    """The messages that ask for a solution.

    With a caller's conversation, its turns are kept as they are and the strategy's
    instruction joins the caller's system prompt (after it) instead of replacing it.
    The instruction asks for a final number only when the answer's kind is a number:
    a JSON, tool-call or free-text answer takes its shape from the caller's request.
    """
    if conversation is None or (conversation.plain and conversation.answer_kind == "number"):
        return [
            {"role": "system", "content": system or SOLVE_SYSTEM},
            {"role": "user", "content": problem},
        ]
    callers = [
        message_text(m) for m in conversation.messages if m.get("role") in ("system", "developer")
    ]
    ours = (system or SOLVE_SYSTEM) if conversation.answer_kind == "number" else system
    prompt = "\n\n".join(text for text in [*callers, ours] if text)
    turns = [m for m in conversation.messages if m.get("role") not in ("system", "developer")]
    return ([{"role": "system", "content": prompt}] if prompt else []) + turns
