"""The API's own documentation pages, served with no internet.

FastAPI's default ``/docs`` loads Swagger UI from a CDN, so it is blank on a machine
without internet. Here it loads from ``/docs/assets``: the files of the
``fastapi-offline`` package (Swagger UI 5; MIT, depends on FastAPI alone). Swagger UI
must be 5 or later: FastAPI's schema is OpenAPI 3.1, which Swagger UI 4 (the
``swagger-ui-bundle`` package) refuses to render ("Unable to render this definition").
There is no ``/redoc``: ReDoc, even served locally, still loads its logo from Redocly's
CDN, and ``/docs`` covers the same schema.

The schema declares the bearer API key and marks every operation under ``/v1/`` with it
(what ``app.api.deps.get_tenant`` enforces), so ``/docs`` has an Authorize button; the
probes, ``/metrics`` and the dashboard stay unmarked, as they need no key.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs/assets"
OAUTH2_REDIRECT = "/docs/oauth2-redirect"
SCHEME = "bearer"
SECURED_PREFIX = "/v1/"


def install_docs(app: FastAPI) -> None:
    """``/docs`` from local files, and a schema with the bearer scheme.

    Build the app with ``docs_url=None, redoc_url=None`` so that FastAPI adds no CDN page.
    """
    assets = files("fastapi_offline") / "static"
    app.mount(ASSETS, StaticFiles(directory=str(assets)), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} API",
            oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT}",
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/favicon.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )

    @app.get(OAUTH2_REDIRECT, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schema.setdefault("components", {})["securitySchemes"] = {
                SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key from `ponder keys create --tenant T`. Until "
                    "the first key exists, requests without one are accepted.",
                }
            }
            for path, operations in schema.get("paths", {}).items():
                # /metrics takes the operator's token (PONDER_API_METRICS_TOKEN) the same way.
                if path.startswith(SECURED_PREFIX) or path == "/metrics":
                    for operation in operations.values():
                        operation["security"] = [{SCHEME: []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
