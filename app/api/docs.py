"""The API's own documentation pages, served with no internet: Swagger UI's files come
from the ``swagger-ui-bundle`` package (not a CDN, FastAPI's default), and the OpenAPI
schema declares the bearer key, so ``/docs`` has an Authorize button.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

ASSETS = "/docs/assets"
SCHEME = "bearer"
# Paths that need no key (app.api.deps): probes, metrics, the dashboard's shell.
_OPEN_PREFIXES = ("/healthz", "/readyz", "/metrics", "/dashboard", "/docs", "/openapi.json")


def install_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI from local files) and a schema with the bearer scheme.

    Build the app with ``docs_url=None, redoc_url=None`` so that FastAPI adds no CDN page.
    """
    app.mount(ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            oauth2_redirect_url="/docs/oauth2-redirect",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
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
                if path.startswith(_OPEN_PREFIXES):
                    continue
                for operation in operations.values():
                    operation["security"] = [{SCHEME: []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
