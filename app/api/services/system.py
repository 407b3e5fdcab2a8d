"""Strategies, pools and readiness: what the service can do and whether it can now."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import text

from app.api.deps import ApiState
from app.api.schemas import BreakerReportOut, Check, EndpointOut, PoolOut, Readiness, StrategyOut
from core.breaker_reports import Report, open_reports
from core.pools.endpoint import EndpointHealth
from strategies.registry import STRATEGIES

log = logging.getLogger(__name__)

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


_SEVERITY = {"closed": 0, "half_open": 1, "open": 2}


async def _worker_reports(state: ApiState) -> dict[tuple[str, str], list[Report]]:
    reset_s = {role: state.pools[role].settings.breaker_reset_s for role in state.pools}
    try:
        async with state.sessions() as session:
            return await open_reports(session, reset_s)
    except Exception as exc:  # the pools view must not depend on the database being up
        log.warning("breaker reports not read (%s: %s)", type(exc).__name__, exc)
        return {}


async def pools(state: ApiState, *, probe: bool) -> list[PoolOut]:
    roles = sorted(state.pools)
    health = await asyncio.gather(*(_probe(state, r) for r in roles)) if probe else []
    reports = await _worker_reports(state)
    out = []
    for index, role in enumerate(roles):
        client = state.pools[role]
        probes = {h.url: h for h in (health[index] or [])} if probe else {}
        endpoints = []
        for snap in client.snapshot():
            h = probes.get(snap.url)
            reported = reports.get((role, snap.url), [])
            breaker = max([snap.breaker, *(r.state for r in reported)], key=_SEVERITY.__getitem__)
            endpoints.append(
                EndpointOut(
                    **(snap.model_dump() | {"breaker": breaker}),
                    reported_by_workers=[
                        BreakerReportOut(worker=r.worker, state=r.state, reason=r.reason, at=r.at)
                        for r in reported
                    ],
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
            # The text may name hosts and ports: it goes to the log, not the answer.
            log.warning("readyz: database check failed: %s: %s", type(exc).__name__, exc)
            return Check(ok=False, detail=f"database did not answer ({type(exc).__name__})")

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
