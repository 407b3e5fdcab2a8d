"""Job budgets with reservation, so concurrent fan-out can never overshoot.

Before a call is sent, ``reserve`` sets aside ``max_tokens × n`` generated tokens (and
one call, and the call's worst-case cost) from what is left; ``settle`` charges what
the call really used and returns the rest. Reservation happens synchronously at issue
time, so eight samples launched together see each other's reservations. When what is
left cannot pay for a call as asked, ``max_tokens`` is lowered to fit (the call still
runs, shorter); when not even ``min_tokens`` per choice fits, ``BudgetExhausted`` is
raised and the strategy returns its best answer so far.

Token limits count *generated* tokens (the test-time compute a strategy spends); prompt
tokens are reported and priced through ``max_cost``. Journal hits are charged like live
calls: a resumed or replayed job spends the same logical budget as the original.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import InvalidInput
from strategies.protocol import BudgetExhausted, Usage


class BudgetSpec(BaseModel):
    """What a job may spend. Every limit is optional."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = Field(default=None, ge=1, description="Generated tokens, all roles.")
    max_calls: int | None = Field(default=None, ge=1, description="Logical model calls.")
    max_seconds: float | None = Field(default=None, gt=0, description="Wall time of the job.")
    max_cost: float | None = Field(default=None, gt=0, description="Cost from pool prices.")
    role_tokens: dict[str, int] = Field(
        default_factory=dict, description="Generated-token caps per role, e.g. {'large': 2000}."
    )
    min_tokens: int = Field(
        default=16, ge=1, description="Smallest max_tokens per choice worth sending."
    )
    max_tool_calls: int | None = Field(
        default=None, ge=1, description="Tool calls (sandboxed programs, MCP tools)."
    )
    max_tool_seconds: float | None = Field(
        default=None, gt=0, description="Wall time spent in tool calls, summed."
    )


def parse_budget(budget: Mapping[str, Any] | None) -> BudgetSpec:
    """A budget as a caller gave it (None: no limits); an error names ``budget.<field>``."""
    try:
        return BudgetSpec.model_validate(dict(budget or {}))
    except ValidationError as exc:
        first = exc.errors()[0]
        field = "budget." + ".".join(str(p) for p in first["loc"])
        raise InvalidInput(f"{field}: {first['msg']}", field=field) from None


@dataclass
class Reservation:
    role: str
    tokens: int
    cost: float
    max_tokens: int
    """The per-choice max_tokens the call may use (possibly lowered to fit)."""
    timeout_s: float | None


@dataclass
class Spent:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    """Every generated token; limits count these (reasoning included, once)."""
    reasoning_tokens: int = 0
    """The part of ``completion_tokens`` spent reasoning (reported, never charged twice)."""
    reasoning_tokens_estimated: bool = False
    cost: float = 0.0
    """The sum of the calls whose cost is known."""
    cost_known: bool = True
    """False once a call ran on a pool without prices: ``cost`` is then a lower bound."""


@dataclass
class ToolSpent:
    calls: int = 0
    seconds: float = 0.0


class JobBudget:
    def __init__(self, spec: BudgetSpec, clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self._clock = clock
        self._started = clock()
        self.spent = Spent()
        self.by_role: dict[str, Spent] = {}
        self._reserved_tokens = 0
        self._reserved_role_tokens: dict[str, int] = {}
        self._reserved_calls = 0
        self._reserved_cost = 0.0
        self.tools = ToolSpent()
        self._reserved_tool_calls = 0
        self.was_exhausted = False

    # -- what strategies may read -------------------------------------------------
    def remaining_tokens(self) -> int | None:
        if self.spec.max_tokens is None:
            return None
        return max(0, self.spec.max_tokens - self.spent.completion_tokens - self._reserved_tokens)

    def exhausted(self) -> bool:
        remaining = self.remaining_tokens()
        if remaining is not None and remaining < self.spec.min_tokens:
            return True
        calls = self.spec.max_calls
        if calls is not None and self.spent.calls + self._reserved_calls >= calls:
            return True
        seconds = self.remaining_seconds()
        return seconds is not None and seconds <= 0

    def remaining_seconds(self) -> float | None:
        if self.spec.max_seconds is None:
            return None
        return self.spec.max_seconds - (self._clock() - self._started)

    # -- what the context does around each call ----------------------------------------
    def _fail(self, what: str, detail: str) -> BudgetExhausted:
        self.was_exhausted = True
        return BudgetExhausted(what, detail)  # type: ignore[arg-type]

    def out_of_time(self, detail: str = "") -> BudgetExhausted:
        """The outcome of a call that the job's deadline cut short, marked on the job.

        ``reserve`` refuses calls once ``max_seconds`` has passed; a call already under
        way carries ``Reservation.timeout_s`` to its pool, which stops it there.
        """
        return self._fail("seconds", detail or f"{self.spec.max_seconds} s used")

    def reserve(
        self,
        role: str,
        *,
        max_tokens: int,
        n: int,
        price_in_per_1k: float = 0.0,
        price_out_per_1k: float = 0.0,
        prompt_tokens_estimate: int = 0,
    ) -> Reservation:
        fitted = max_tokens
        caps = []
        total_left = self.remaining_tokens()
        if total_left is not None:
            caps.append(("tokens", total_left))
        role_cap = self.spec.role_tokens.get(role)
        if role_cap is not None:
            used = self.by_role.get(role, Spent()).completion_tokens
            reserved = self._reserved_role_tokens.get(role, 0)
            caps.append(("tokens", max(0, role_cap - used - reserved)))
        for what, left in caps:
            fitted = min(fitted, left // n)
            if fitted < min(self.spec.min_tokens, max_tokens):
                raise self._fail(what, f"{left} tokens left for {n} × {max_tokens}")

        calls = self.spec.max_calls
        if calls is not None and self.spent.calls + self._reserved_calls + 1 > calls:
            raise self._fail("calls", f"{calls} calls used")

        cost = (
            prompt_tokens_estimate * n * price_in_per_1k + fitted * n * price_out_per_1k
        ) / 1000.0
        if self.spec.max_cost is not None:
            left_cost = self.spec.max_cost - self.spent.cost - self._reserved_cost
            if cost > left_cost:
                per_token = n * price_out_per_1k / 1000.0
                prompt_cost = prompt_tokens_estimate * n * price_in_per_1k / 1000.0
                # The epsilon keeps float noise (0.01 / 0.00002 = 499.99...) from losing a token.
                affordable = int((left_cost - prompt_cost) / per_token + 1e-9) if per_token else 0
                fitted = min(fitted, affordable)
                if fitted < min(self.spec.min_tokens, max_tokens):
                    raise self._fail("cost", f"{left_cost:.6f} left")
                cost = prompt_cost + fitted * per_token

        timeout = self.remaining_seconds()
        if timeout is not None and timeout <= 0:
            raise self._fail("seconds", f"{self.spec.max_seconds} s used")

        tokens = fitted * n
        self._reserved_tokens += tokens
        self._reserved_role_tokens[role] = self._reserved_role_tokens.get(role, 0) + tokens
        self._reserved_calls += 1
        self._reserved_cost += cost
        return Reservation(role, tokens, cost, fitted, timeout)

    def reserve_tool(self, tool: str) -> float | None:
        """Set one tool call aside; the seconds it may take (None: no limit).

        Tool calls have budget dimensions of their own, since they cost no tokens: a
        count, and their summed wall time. The job's deadline bounds them too.
        """
        limit = self.spec.max_tool_calls
        if limit is not None and self.tools.calls + self._reserved_tool_calls + 1 > limit:
            raise self._fail("tool_calls", f"{limit} tool calls used")
        left = [self.remaining_seconds()]
        if self.spec.max_tool_seconds is not None:
            left.append(self.spec.max_tool_seconds - self.tools.seconds)
        known = [x for x in left if x is not None]
        if known and min(known) <= 0:
            what = "seconds" if left[0] is not None and left[0] <= 0 else "tool_seconds"
            raise self._fail(what, f"no time left for a call to {tool}")
        self._reserved_tool_calls += 1
        return min(known) if known else None

    def charge_tool_hit(self, seconds: float) -> None:
        """A tool call answered by the journal spends what it spent when it ran, as a
        model call's journal hit does: a replay reports the same tool budget."""
        self.tools.calls += 1
        self.tools.seconds += seconds

    def settle_tool(self, seconds: float | None) -> None:
        """Release a tool reservation; ``seconds`` None: the call never ran."""
        self._reserved_tool_calls -= 1
        if seconds is not None:
            self.tools.calls += 1
            self.tools.seconds += seconds

    def settle(self, reservation: Reservation, usage: Usage | None, cost: float | None) -> None:
        """Release the reservation and charge what was used (``usage`` None: nothing;
        ``cost`` None: the pool has no price, so the job's cost becomes unknown)."""
        self._reserved_tokens -= reservation.tokens
        self._reserved_role_tokens[reservation.role] -= reservation.tokens
        self._reserved_calls -= 1
        self._reserved_cost -= reservation.cost
        if usage is None:
            return
        role = self.by_role.setdefault(reservation.role, Spent())
        for spent in (self.spent, role):
            spent.calls += 1
            spent.prompt_tokens += usage.prompt_tokens
            spent.completion_tokens += usage.completion_tokens
            spent.reasoning_tokens += usage.reasoning_tokens
            spent.reasoning_tokens_estimated |= usage.reasoning_tokens_estimated
            if cost is None:
                spent.cost_known = False
            else:
                spent.cost += cost
