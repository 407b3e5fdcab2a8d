"""A trace's journal says a cost it does not know is unknown (null, ``cost_known: false``),
never adds it in as 0 — the same rule as a job's usage and ``ponder eval``."""

from __future__ import annotations

from typing import Any

from app.api.services.traces import journal_summary
from core.db.models import ModelCall


def entry(seq: int, cost: float, **response: Any) -> ModelCall:
    return ModelCall(
        job_id="j", seq=seq, key=f"k{seq}", occurrence=0, role="large", request={},
        response={"choices": [], **response}, endpoint=None, latency_ms=5.0, attempts=[],
        prompt_tokens=10, completion_tokens=20, cost=cost, source_job_id=None,
    )  # fmt: skip


def test_priced_entries_sum() -> None:
    summary = journal_summary([entry(0, 0.002), entry(1, 0.0)])
    assert summary.cost_known and summary.cost == 0.002
    assert [c.cost for c in summary.calls] == [0.002, 0.0]  # 0 is a price


def test_an_entry_from_a_pool_without_prices_makes_the_sum_unknown() -> None:
    summary = journal_summary([entry(0, 0.002), entry(1, 0.0, cost_known=False)])
    assert summary.cost is None and summary.cost_known is False
    assert [c.cost for c in summary.calls] == [0.002, None]
    assert summary.completion_tokens == 40  # tokens are still known
