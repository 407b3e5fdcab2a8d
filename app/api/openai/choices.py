"""``n`` > 1: the top distinct answers of the one job, ranked by votes.

One job answers a request whatever its ``n`` (usage counts that job once). Its vote
(``result.votes``, answer -> count, in rank order with ties by first appearance) ranks
the distinct answers; choice 0 is the job's own answer as it always is, choices 1..n-1
the runners-up. A runner-up's content is the text of the first sample that gave that
answer, found in the job's journal (the answer as extracted from each recorded
completion), else the answer itself. There are fewer than ``n`` choices when the job
found fewer distinct answers: a strategy without a vote (``direct``) gives one.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.api.openai.finished import Finished
from core.db import repo
from strategies.shared.answers import extract_answer


@dataclass(frozen=True)
class Alternative:
    answer: str
    votes: int
    content: str


def ranked_votes(job: Finished) -> list[tuple[str, int]]:
    votes = (job.result or {}).get("votes") or {}
    pairs = [(str(k), int(v)) for k, v in votes.items() if isinstance(v, int | float)]
    # Stable: equal counts keep the order the strategy ranked them in.
    return sorted(pairs, key=lambda pair: -pair[1])


async def alternatives(
    sessions: async_sessionmaker[AsyncSession], job: Finished, n: int
) -> list[Alternative]:
    """Choices 1..n-1: the runners-up of the job's vote, best first. The journal is read
    only when there are runners-up (never for ``n`` = 1)."""
    answer = (job.result or {}).get("answer")
    runners_up = [(a, v) for a, v in ranked_votes(job) if a != answer][: max(n - 1, 0)]
    if not runners_up:
        return []
    async with sessions() as session:
        texts = await _sample_texts(session, job.id)
    found: dict[str, str] = {}
    for text in texts:
        key = extract_answer(text)
        if key is not None:
            found.setdefault(key, text)
    return [Alternative(a, v, found.get(a, a)) for a, v in runners_up]


async def _sample_texts(session: AsyncSession, job_id: str) -> list[str]:
    texts: list[str] = []
    for call in await repo.list_calls(session, job_id):
        for choice in (call.response or {}).get("choices") or []:
            text = choice.get("text") if isinstance(choice, dict) else None
            if isinstance(text, str):
                texts.append(text)
    return texts
