"""Strategies, pools and readiness: what the service can do and whether it can now."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from app.api.deps import ApiState
from app.api.schemas import Check, EndpointOut, PoolOut, Readiness, StrategyOut
from core.pools.endpoint import EndpointHealth
from strategies.registry import STRATEGIES

MODEL_PREFIX = "ponder/"


def strategies() -> list[StrategyOut]:
    return [
        StrategyOut(
            kind=kind,
            model=MODEL_PREFIX + kind,
            doc=entry.doc,
            schema=entry.params.model_json_schema(),
        )
        for kind, entry in sorted(STRATEGIES.items())
    ]


async def _probe(state: ApiState, role: str) -> list[EndpointHealth] | None:
    try:
        async with asyncio.timeout(state.api.health_timeout_s):
            return await state.pools[role].health()
    except TimeoutError:
        return None


async def pools(state: ApiState, *, probe: bool) -> list[PoolOut]:
    roles = sorted(state.pools)
    health = await asyncio.gather(*(_probe(state, r) for r in roles)) if probe else []
    out = []
    for index, role in enumerate(roles):
        client = state.pools[role]
        probes = {h.url: h for h in (health[index] or [])} if probe else {}
        endpoints = []
        for snap in client.snapshot():
            h = probes.get(snap.url)
            endpoints.append(
                EndpointOut(
                    **snap.model_dump(),
                    healthy=h.ok if h else (False if probe else None),
                    health_status=h.status if h else None,
                    health_latency_ms=round(h.latency_ms, 3) if h else None,
                    health_error=(h.error if h else ("probe timed out" if probe else None)),
                )
            )
        out.append(
            PoolOut(
                role=role,
                model=client.settings.model,
                kind=client.settings.kind,
                endpoints=endpoints,
            )
        )
    return out


async def readiness(state: ApiState) -> Readiness:
    async def database() -> Check:
        try:
            async with asyncio.timeout(state.api.health_timeout_s), state.engine.connect() as c:
                await c.execute(text("SELECT 1"))
            return Check(ok=True, detail=state.engine.dialect.name)
        except Exception as exc:  # any failure to reach the database means "not ready"
            return Check(ok=False, detail=f"{type(exc).__name__}: {exc}")

    async def broker() -> Check:
        try:
            async with asyncio.timeout(state.api.health_timeout_s):
                result = await state.executor.ready()
            return Check(ok=result.ok, detail=result.detail)
        except TimeoutError:
            return Check(ok=False, detail="broker check timed out")

    async def pools_check() -> Check:
        if not state.pools:
            return Check(ok=True, detail="no pools configured (embedded models)")
        views = await pools(state, probe=True)
        down = [p.role for p in views if not any(e.healthy for e in p.endpoints)]
        if down:
            return Check(ok=False, detail=f"no healthy endpoint for: {', '.join(down)}")
        return Check(ok=True, detail=f"{len(views)} pools, each with a healthy endpoint")

    db, br, pl = await asyncio.gather(database(), broker(), pools_check())
    checks = {"database": db, "broker": br, "pools": pl}
    return Readiness(ready=all(c.ok for c in checks.values()), checks=checks)
