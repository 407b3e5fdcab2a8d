"""/v1/strategies and /v1/pools."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import Admin, State, Tenant
from app.api.schemas import PoolOut, StrategyOut
from app.api.services import system

router = APIRouter(prefix="/v1", tags=["catalog"])


@router.get("/strategies", response_model=list[StrategyOut])
async def list_strategies(tenant: Tenant) -> list[StrategyOut]:
    """Each strategy kind with its parameters' JSON schema and its documentation."""
    return system.strategies()


@router.get("/pools", response_model=list[PoolOut])
async def list_pools(state: State, admin: Admin, probe: bool = True) -> list[PoolOut]:
    """Admin keys only (server URLs and load are the operator's). Each model role's
    pool; `probe=true` health-checks every endpoint now. `breaker` is
    the worst of this process's breaker and every worker's reported one
    (`reported_by_workers`); request counts are this API process's own."""
    return await system.pools(state, probe=probe)
