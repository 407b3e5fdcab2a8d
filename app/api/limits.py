"""What a tenant may spend and ask for: budget defaults and caps, jobs in flight, and a
request rate (``ApiSettings.limits``, per-tenant overrides in ``tenant_limits``).

    budget      a job's budget gets the tenant's default for every field it leaves out,
                and a field over the tenant's maximum is a 422 naming it. Budgets are
                enforced call by call (each call reserves its max_tokens first), so a
                job's worst case is its budget whatever strategies it composes.
    in flight   jobs queued or running at once; over it, 429 ``too_many_jobs``.
    rate        requests per tenant to /v1, counted by the `limits` library in Redis
                when the broker is Redis (shared by every API process), else in this
                process; over it, 429 ``rate_limited``. If Redis cannot be reached the
                request is let through (and logged): a limiter must not be an outage.

Every 429 carries ``Retry-After``.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from fastapi import Request
from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from app.api.deps import Tenant
from app.api.errors import TooManyRequests
from app.api.settings import ApiSettings
from core.budget import BudgetSpec
from core.errors import InvalidInput

log = logging.getLogger(__name__)


class Limiter:
    def __init__(self, api: ApiSettings, broker_url: str | None) -> None:
        self.api = api
        self._storage: Storage
        self._pool: Any = None
        if broker_url and broker_url.startswith(("redis://", "rediss://")):
            import redis.asyncio as aioredis

            # Our own pool, so that shutdown can close its connections.
            self._pool = aioredis.ConnectionPool.from_url(
                broker_url, socket_connect_timeout=1, socket_timeout=1
            )
            self._storage = RedisStorage(
                "async+" + broker_url,
                implementation="redispy",
                key_prefix="ponder-rate",
                connection_pool=self._pool,
            )
        else:
            self._storage = MemoryStorage()
        self._limiter = SlidingWindowCounterRateLimiter(self._storage)
        self._items: dict[str, list[RateLimitItem]] = {}

    def _rates(self, rate: str) -> list[RateLimitItem]:
        items = self._items.get(rate)
        if items is None:
            items = self._items[rate] = parse_many(rate)
        return items

    async def check_rate(self, tenant: str) -> None:
        rate = self.api.limits_for(tenant).rate
        if rate is None:
            return
        for item in self._rates(rate):
            try:
                allowed = await self._limiter.hit(item, tenant)
                if allowed:
                    continue
                stats = await self._limiter.get_window_stats(item, tenant)
            except Exception as exc:  # the limiter's store is down: let the request in
                log.warning("rate limit not checked (%s: %s)", type(exc).__name__, exc)
                return
            wait = max(1, math.ceil(stats.reset_time - time.time()))
            raise TooManyRequests(
                f"over this key's rate limit of {item}; retry in {wait} s",
                code="rate_limited",
                retry_after_s=wait,
                limit=str(item),
            )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()


def apply_budget(api: ApiSettings, tenant: str, budget: BudgetSpec) -> BudgetSpec:
    """The tenant's defaults filled in; a field over its maximum is refused."""
    limits = api.limits_for(tenant)
    given = budget.model_dump(exclude_unset=True)
    filled = {k: v for k, v in limits.default_budget.items() if given.get(k) is None}
    merged = budget.model_copy(update=filled) if filled else budget
    for name, cap in limits.max_budget.items():
        value = getattr(merged, name, None)
        if value is not None and value > cap:
            raise InvalidInput(
                f"budget.{name} is {value}; this tenant's limit is {cap}",
                field=f"budget.{name}",
                limit=cap,
            )
    return merged


async def enforce_rate(request: Request, tenant: Tenant) -> None:
    """Router dependency (FastAPI resolves ``Tenant`` once per request, shared with the
    route)."""
    limiter: Limiter | None = getattr(request.app.state, "limiter", None)
    if limiter is not None:
        await limiter.check_rate(tenant)
