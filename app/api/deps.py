"""Request dependencies: the app's shared services, a database session, the tenant.

Authentication: ``Authorization: Bearer <key>``; the key's tenant scopes everything the
request can see. Until the first key is created, requests without a key are accepted as
tenant ``default`` (``ponder serve`` then binds 127.0.0.1 only); from then on every
``/v1`` request needs an active one, even after every key has been revoked.

Scopes: a ``tenant`` key (the default) sees its own jobs; an ``admin`` key also sees
what is the operator's (``Admin``: ``GET /v1/pools``, and ``/metrics`` when no metrics
token is set); any other key gets 403 ``forbidden``. The keyless open server's caller
counts as admin: that server listens on loopback only, so its one user is the operator.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.api.errors import Forbidden, Unauthorized
from app.api.executor import JobExecutor
from app.api.key_cache import KeyCache
from app.api.quota import InFlight
from app.api.settings import ApiSettings
from core import keys
from core.db import repo
from core.keys import Principal
from core.live import LiveEvents
from core.logs import bind
from core.pools.registry import Pools
from core.settings import PoolSettings, Settings

DEFAULT_TENANT = "default"


@dataclass
class ApiState:
    """Everything the routes share, built once by the app's lifespan."""

    settings: Settings
    api: ApiSettings
    pool_settings: Mapping[str, PoolSettings]
    engine: AsyncEngine
    sync_engine: Engine
    sessions: async_sessionmaker[AsyncSession]
    pools: Pools
    executor: JobExecutor
    key_cache: KeyCache[Principal] = field(default_factory=lambda: KeyCache(2.0))
    in_flight: InFlight = field(default_factory=InFlight)
    live: LiveEvents | None = None
    """The process's trace-commit listener, for live event streams (``core.live``)."""
    sandbox_refusals: dict[bool, str | None] = field(default_factory=dict)
    """Why the built-in sandbox cannot run in this process (None: it can), by
    ``settings.python_tool``: asked once, for the OpenAI face's lane (see
    ``app.api.openai_compat._sandbox_refusal``)."""


async def get_state(request: Request) -> ApiState:
    # async: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop on
    # every request for one attribute read.
    state: ApiState = request.app.state.ponder
    return state


State = Annotated[ApiState, Depends(get_state)]


async def get_session(state: State) -> AsyncIterator[AsyncSession]:
    # Read-only work: writes go through core functions that own their transaction.
    async with state.sessions() as session:
        yield session


# scope="function": closed when the route returns, not when a streamed response ends, so
# a long SSE stream never holds a pooled connection.
Session = Annotated[AsyncSession, Depends(get_session, scope="function")]


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <API key>'")
    return token.strip()


OPEN = Principal(DEFAULT_TENANT, "admin")
"""Who a request is while no key exists: the server then binds loopback only (``ponder
serve``), so its one user is the operator."""


async def get_principal(request: Request, state: State) -> Principal:
    # Usually no session at all: both facts come from the key cache (app.api.key_cache).
    # A miss opens its own session and closes it before the route runs: a request never
    # holds two pooled connections at once, which deadlocked the pool under load (each
    # request held one here and waited for a second in the route).
    token = _bearer(request)
    cache = state.key_cache

    async def keys_exist() -> bool:
        async with state.sessions() as session:
            return await repo.any_api_key(session)

    if token is None:
        if await cache.keys_exist(keys_exist):
            raise Unauthorized("an API key is required: 'Authorization: Bearer <key>'")
        return OPEN
    found = token

    async def principal_of_key() -> Principal | None:
        async with state.sessions() as session:
            return await keys.principal_for_key(session, found)

    principal = await cache.lookup(token, principal_of_key)
    if principal is None:
        # With no key ever created the server is open: a token is ignored rather than
        # refused, because OpenAI clients cannot send a request without one.
        if not await cache.keys_exist(keys_exist):
            return OPEN
        raise Unauthorized("unknown or revoked API key")
    # The route runs in this context: its log lines name the tenant.
    bind(tenant=principal.tenant)
    return principal


async def get_tenant(principal: Annotated[Principal, Depends(get_principal)]) -> str:
    return principal.tenant


async def require_admin(principal: Annotated[Principal, Depends(get_principal)]) -> str:
    if not principal.admin:
        raise Forbidden(
            "this needs an admin key (`ponder keys create --tenant T --admin`): it shows "
            "the operator's servers"
        )
    return principal.tenant


Tenant = Annotated[str, Depends(get_tenant)]
Admin = Annotated[str, Depends(require_admin)]
"""The tenant of an admin key (or of the open, keyless server)."""
