"""/healthz, /readyz: for orchestrators, no key needed; /metrics: for the operator's
scraper, with ``PONDER_API_METRICS_TOKEN``."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.deps import ApiState, State
from app.api.errors import Unauthorized
from app.api.schemas import ErrorOut, Readiness
from app.api.services import system
from core.db import repo

router = APIRouter(tags=["system"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (no dependency is checked)."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(state: State) -> JSONResponse:
    """Database, broker and pools: 200 when all answer, else 503 saying which did not."""
    result = await system.readiness(state)
    return JSONResponse(result.model_dump(mode="json"), status_code=200 if result.ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={401: {"model": ErrorOut, "description": "No or a wrong metrics token."}},
)
async def metrics(request: Request, state: State) -> Response:
    """Prometheus metrics of every tenant: for the operator only. Send
    `Authorization: Bearer <PONDER_API_METRICS_TOKEN>`; without that setting, open only
    while no API key exists."""
    await _operator_only(request, state)
    body = await request.app.state.metrics.render(state.sessions)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def _operator_only(request: Request, state: ApiState) -> None:
    token = state.api.metrics_token
    sent = request.headers.get("authorization", "")
    if token is not None:
        expected = f"Bearer {token.get_secret_value()}"
        if not hmac.compare_digest(sent.encode(), expected.encode()):
            raise Unauthorized("/metrics needs 'Authorization: Bearer <PONDER_API_METRICS_TOKEN>'")
        return
    async with state.sessions() as session:

        async def keys_exist() -> bool:
            return await repo.any_api_key(session)

        if await state.key_cache.keys_exist(keys_exist):
            raise Unauthorized(
                "/metrics reports every tenant: set PONDER_API_METRICS_TOKEN on the API "
                "and scrape with 'Authorization: Bearer <token>'"
            )
