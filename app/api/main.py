"""The FastAPI application.

    uvicorn app.api.main:app          # settings from PONDER_* / .env, Celery executor

``create_app`` is the factory: tests and ``ponder serve`` pass their own settings, the
pools to validate against (``ponder serve`` passes the embedded models' pools) and an
executor (``InProcessExecutor`` runs jobs in this process; the default enqueues to Celery
after commit). Building the app opens nothing; the lifespan opens a ``core.runtime.Runtime``
(the database engines and the pool clients, as the worker and the CLI do; no network
until a request needs it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from app.api.deps import ApiState
from app.api.docs import install_docs
from app.api.errors import BodyLimitMiddleware, install_handlers, refuse_unknown_query
from app.api.executor import CeleryExecutor, ExecutorContext, InProcessExecutor, JobExecutor
from app.api.failures import RequestContextMiddleware
from app.api.interactive import LaneExecutor
from app.api.key_cache import KeyCache
from app.api.limits import Limiter, enforce_rate
from app.api.metrics import ApiMetrics, HttpMetricsMiddleware
from app.api.openai_compat import router as openai_router
from app.api.reload import ConfigReloader
from app.api.routes.catalog import router as catalog_router
from app.api.routes.experiments import router as experiments_router
from app.api.routes.jobs import router as jobs_router
from app.api.routes.presets import router as presets_router
from app.api.routes.system import router as system_router
from app.api.routes.traces import router as traces_router
from app.api.schemas import OPENAI_ERRORS, V1_ERRORS
from app.api.settings import ApiSettings, api_settings_or_exit
from app.api.telemetry import JobTraceMiddleware
from app.api.telemetry import start as start_telemetry
from app.dashboard.router import router as dashboard_router
from core.keys import Principal
from core.live import LiveEvents
from core.logs import configure_logging
from core.runtime import Runtime
from core.settings import PoolSettings, Settings, get_settings

DESCRIPTION = """Submit reasoning jobs, follow them live, replay, fork and diff them.
Authenticate with `Authorization: Bearer <key>` (`ponder keys create --tenant T`);
errors are `{"error": {"code", "message", "field"?}}`. See docs/api.md."""


def create_app(
    settings: Settings | None = None,
    *,
    executor: JobExecutor | None = None,
    pools: Mapping[str, PoolSettings] | None = None,
    api_settings: ApiSettings | None = None,
) -> FastAPI:
    """Build the API.

    Args:
        settings: core settings (database, pools); default: from the environment.
        executor: runs committed jobs; default by ``PONDER_API_EXECUTOR``: ``celery``
            (``CeleryExecutor``, enqueue after commit) or ``in-process``.
        pools: role -> pool settings to validate and run against; default
            ``settings.pools``.
        api_settings: HTTP-layer limits; default: from ``PONDER_API_*``.

    Example:
        >>> app = create_app(settings, executor=InProcessExecutor())
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)
    """
    api = api_settings or ApiSettings()
    metrics = ApiMetrics(api.metrics_cache_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        core_settings = settings or get_settings()
        # The runtime the worker and the CLI build too: engines, sessions, pool clients
        # sharing one HTTP client (no network until a request needs a model).
        given = pools if pools is not None else core_settings.pools
        # One LISTEN connection per process wakes live event streams (core.live).
        # OpenTelemetry export when OTEL_* asks (docs/observability.md).
        async with (
            start_telemetry(),
            Runtime(core_settings, pools=given) as runtime,
            LiveEvents.for_engine(runtime.engine) as live,
        ):
            assert runtime.engine is not None and runtime.sync_engine is not None
            chosen = executor if executor is not None else _default_executor(api)
            state = ApiState(
                settings=core_settings,
                api=api,
                pool_settings=runtime.pool_settings,
                engine=runtime.engine,
                sync_engine=runtime.sync_engine,
                sessions=runtime.sessions,
                pools=runtime.pools,
                executor=chosen,
                key_cache=KeyCache[Principal](api.key_cache_s),
                live=live,
            )
            await chosen.start(
                ExecutorContext(
                    state.sessions,
                    runtime.sync_engine,
                    runtime.pools,
                    core_settings.broker_url,
                    core_settings.worker,
                    runtime.tools,
                )
            )
            app.state.ponder = state
            app.state.limiter = limiter = Limiter(api, core_settings.broker_url)
            # SIGHUP re-reads PONDER_CONFIG: pools, tools, tenant limits (app/api/reload.py).
            reloader = ConfigReloader(state, runtime, limiter, pools=pools is None)
            reloader.install()
            try:
                yield
            finally:
                reloader.remove()
                await limiter.close()
                await chosen.close()

    app = FastAPI(
        title="Ponder",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # app.api.docs serves /docs from local files, not a CDN
        redoc_url=None,
    )
    app.state.metrics = metrics
    install_handlers(app)
    install_docs(app)
    rate = Depends(enforce_rate)
    strict_query = [Depends(refuse_unknown_query), rate]
    for router in (jobs_router, traces_router, catalog_router, presets_router, experiments_router):
        app.include_router(router, responses=V1_ERRORS, dependencies=strict_query)
    # OpenAI clients may add query parameters of their own (Azure's api-version): ignored.
    app.include_router(openai_router, responses=OPENAI_ERRORS, dependencies=[rate])
    app.include_router(system_router)
    app.include_router(dashboard_router)
    # Outermost last: metrics see every request, including those refused for size.
    app.add_middleware(BodyLimitMiddleware, limit=api.max_body_bytes)
    app.add_middleware(HttpMetricsMiddleware, metrics=metrics)
    # A job's request span (OpenTelemetry export, when on) sees the request id.
    app.add_middleware(JobTraceMiddleware)
    # Outermost of all: a request id for everything below, and a JSON answer for a crash.
    app.add_middleware(RequestContextMiddleware)
    return app


def _default_executor(api: ApiSettings) -> JobExecutor:
    if api.executor == "in-process":
        return InProcessExecutor()
    if api.interactive:
        return LaneExecutor(CeleryExecutor(), max_jobs=api.interactive_max_jobs)
    return CeleryExecutor()


def __getattr__(name: str) -> FastAPI:
    # `uvicorn app.api.main:app` gets an app built on first access, not on import, so
    # importing this module (tests, `ponder serve`) reads no settings.
    if name == "app":
        from core.settings_errors import settings_or_exit

        settings_or_exit("ponder api")  # bad PONDER_* settings: one sentence each, exit 2
        # The process's logging (PONDER_LOG_*): uvicorn configured its own before loading
        # the app; in JSON mode its lines are routed through Ponder's handler too.
        configure_logging()
        # The HTTP layer's own (PONDER_API_*, the config file's `api:` section), likewise.
        built = create_app(api_settings=api_settings_or_exit())
        globals()["app"] = built
        return built
    raise AttributeError(name)
