from __future__ import annotations

import pytest

from core.budget import BudgetSpec, JobBudget
from strategies.protocol import BudgetExhausted, Usage


def test_reservations_count_against_concurrent_calls() -> None:
    budget = JobBudget(BudgetSpec(max_tokens=1000))
    first = budget.reserve("small", max_tokens=100, n=8)
    assert first.max_tokens == 100
    # 200 tokens left for the second fan-out of 8: each choice is lowered to 25.
    second = budget.reserve("small", max_tokens=100, n=8)
    assert second.max_tokens == 25
    with pytest.raises(BudgetExhausted) as caught:
        budget.reserve("small", max_tokens=100, n=8)
    assert caught.value.what == "tokens"
    assert budget.was_exhausted


def test_settle_releases_the_unused_part() -> None:
    budget = JobBudget(BudgetSpec(max_tokens=100))
    reservation = budget.reserve("small", max_tokens=80, n=1)
    assert budget.remaining_tokens() == 20
    budget.settle(reservation, Usage(prompt_tokens=10, completion_tokens=30), 0.0)
    assert budget.remaining_tokens() == 70
    assert budget.spent.completion_tokens == 30
    assert budget.by_role["small"].calls == 1


def test_failed_call_charges_nothing() -> None:
    budget = JobBudget(BudgetSpec(max_calls=1))
    reservation = budget.reserve("small", max_tokens=10, n=1)
    with pytest.raises(BudgetExhausted):
        budget.reserve("small", max_tokens=10, n=1)
    budget.settle(reservation, None, 0.0)
    assert budget.spent.calls == 0
    budget.reserve("small", max_tokens=10, n=1)


def test_role_cap_is_separate_from_the_total() -> None:
    budget = JobBudget(BudgetSpec(role_tokens={"large": 50}))
    assert budget.reserve("small", max_tokens=500, n=1).max_tokens == 500
    assert budget.reserve("large", max_tokens=500, n=1).max_tokens == 50
    with pytest.raises(BudgetExhausted):
        budget.reserve("large", max_tokens=500, n=1)


def test_cost_limit_lowers_max_tokens_to_what_is_affordable() -> None:
    budget = JobBudget(BudgetSpec(max_cost=0.01))
    reservation = budget.reserve(
        "large", max_tokens=1000, n=1, price_out_per_1k=0.02, prompt_tokens_estimate=0
    )
    assert reservation.max_tokens == 500


def test_wall_clock_limit() -> None:
    now = [0.0]
    budget = JobBudget(BudgetSpec(max_seconds=5), clock=lambda: now[0])
    assert budget.reserve("small", max_tokens=10, n=1).timeout_s == 5
    now[0] = 6.0
    with pytest.raises(BudgetExhausted) as caught:
        budget.reserve("small", max_tokens=10, n=1)
    assert caught.value.what == "seconds"
