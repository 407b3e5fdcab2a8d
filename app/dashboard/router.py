"""``/dashboard``: the page shell, its static assets, and the dashboard's JSON reads.

The shell and the assets are public (they are code, not data); every byte of data goes
through routes that take the same ``Tenant`` dependency as ``/v1``, so a key sees only
its tenant's jobs and a missing key is a 401 while keys exist.
"""

from __future__ import annotations

import gzip
import html
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel

from app.api.deps import Session, Tenant
from app.api.inputs import Id
from app.api.services.jobs import get_job
from app.dashboard import service
from app.dashboard.schemas import CallTextOut, SpansOut

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
SHELL = (HERE / "templates" / "index.html").read_text(encoding="utf-8")
MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
# Served by name from this fixed set: a request path is never joined onto the disk path.
ASSETS = {p.name: p for p in STATIC.iterdir() if p.suffix in MEDIA_TYPES}

# Model output and questions are rendered as text by the scripts; the policy is the
# second wall: no inline script, nothing from another origin.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
        "form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate (ETag / Last-Modified) on every load, so a deploy is seen at once.
    "Cache-Control": "no-cache",
}

# Out of the OpenAPI document: these reads serve this page, they are not the public API.
router = APIRouter(prefix="/dashboard", include_in_schema=False)


@router.get("", response_class=HTMLResponse)
@router.get("/", response_class=HTMLResponse)
async def shell(request: Request) -> HTMLResponse:
    root = html.escape(request.scope.get("root_path", "").rstrip("/"), quote=True)
    page = SHELL.replace("{{root}}", root)
    return HTMLResponse(page, headers=SECURITY_HEADERS)


@router.get("/static/{name}")
async def asset(name: str) -> Response:
    path = ASSETS.get(name)
    if path is None:
        raise HTTPException(status_code=404)
    headers = {k: v for k, v in SECURITY_HEADERS.items() if k != "Content-Security-Policy"}
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=headers)


GZIP_MIN_BYTES = 32 * 1024


def json_response(request: Request, body: BaseModel, etag: str | None = None) -> Response:
    """``body`` as JSON, serialised once (a ``response_model`` would validate thousands of
    events a second time), gzipped when large and the client accepts it: a 5,000-span
    trace is 2.6 MB of JSON and 0.3 MB gzipped at level 1, which costs ~15 ms."""
    content = body.model_dump_json().encode()
    # private: the browser may keep it (it was fetched with the tenant's key), no proxy may.
    headers = {"Vary": "Accept-Encoding, Authorization", "Cache-Control": "private, no-cache"}
    if etag is not None:
        headers["ETag"] = etag
    if len(content) >= GZIP_MIN_BYTES and "gzip" in request.headers.get("accept-encoding", ""):
        content = gzip.compress(content, compresslevel=1)
        headers["Content-Encoding"] = "gzip"
    return Response(content, media_type="application/json", headers=headers)


@router.get("/api/jobs/{job_id}/spans", responses={200: {"model": SpansOut}})
async def job_spans(request: Request, job_id: Id, session: Session, tenant: Tenant) -> Response:
    """The job and its trace events, without the journal's texts. A finished job's
    answer carries an ETag, so reopening it costs one query and a 304."""
    job = await get_job(session, tenant, job_id)
    etag = service.trace_etag(job)
    if etag is not None and etag in request.headers.get("if-none-match", ""):
        headers = {"ETag": etag, "Vary": "Accept-Encoding, Authorization"}
        return Response(status_code=304, headers=headers)
    return json_response(request, await service.spans(session, job), etag)


@router.get("/api/jobs/{job_id}/calls/{span_id}", responses={200: {"model": CallTextOut}})
async def call_text(
    request: Request, job_id: Id, span_id: Id, session: Session, tenant: Tenant
) -> Response:
    """One model call's request and response from the journal, and its fork point."""
    return json_response(request, await service.call_text(session, tenant, job_id, span_id))
