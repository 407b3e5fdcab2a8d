"""/healthz, /readyz: for orchestrators, no key needed; /metrics: for the operator's
scraper, with ``PONDER_API_METRICS_TOKEN`` (or, without that setting, an admin key)."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.deps import ApiState, State, get_principal
from app.api.errors import Forbidden, Unauthorized
from app.api.schemas import ErrorOut, Readiness
from app.api.services import system

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
    responses={
        401: {"model": ErrorOut, "description": "No or a wrong metrics token (or API key)."},
        403: {"model": ErrorOut, "description": "A tenant key, when no metrics token is set."},
    },
)
async def metrics(request: Request, state: State) -> Response:
    """Prometheus metrics of every tenant: for the operator only. Send
    `Authorization: Bearer <PONDER_API_METRICS_TOKEN>`; without that setting, an admin
    API key (or nothing, while no key exists: the loopback-only open mode)."""
    await _operator_only(request, state)
    body = await request.app.state.metrics.render(state.sessions, state.pools)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def _operator_only(request: Request, state: ApiState) -> None:
    token = state.api.metrics_token
    if token is not None:
        # Once set, the token is the only way in: an admin key gets 401 too.
        sent = request.headers.get("authorization", "")
        expected = f"Bearer {token.get_secret_value()}"
        if not hmac.compare_digest(sent.encode(), expected.encode()):
            raise Unauthorized("/metrics needs 'Authorization: Bearer <PONDER_API_METRICS_TOKEN>'")
        return
    # No token configured: the same rule as GET /v1/pools (401 without a valid key once
    # keys exist, 403 for a tenant key, open while no key exists).
    principal = await get_principal(request, state)
    if not principal.admin:
        raise Forbidden(
            "/metrics reports every tenant: it needs an admin key, or the operator's "
            "PONDER_API_METRICS_TOKEN when the API sets one"
        )
