"""/healthz, /readyz, /metrics: for orchestrators and scrapers, no API key needed."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.deps import State
from app.api.schemas import Readiness
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


@router.get("/metrics", response_class=Response)
async def metrics(request: Request, state: State) -> Response:
    body = await request.app.state.metrics.render(state.sessions)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
