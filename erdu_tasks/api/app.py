"""The ASGI application: routers, the body guard and the error answers, assembled in one place."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import kombu.exceptions
import pydantic
import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline

from erdu_tasks.errors import InvalidEvent, TransientError
from erdu_tasks.settings import Settings
from erdu_tasks.ingest.formats import pagerduty as pd
from erdu_tasks.api import (
    console,
    routes_grouping,
    routes_alertmanager,
    routes_events,
    routes_health,
    routes_heartbeats,
    routes_oncall,
    routes_incidents,
    routes_pagerduty,
    routes_silences,
    routes_slack,
)
from erdu_tasks.api.config import ApiConfig, api_config
from erdu_tasks.api.context import ApiContext, log
from erdu_tasks.api.guard import BodyGuard

RETRY_AFTER_SECONDS = "5"

# What any /v1 operation may answer besides its own responses.
COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "The body or URL is not clean JSON / text (invalid UTF-8, too deep, NUL characters)"},
    401: {"description": "No or wrong bearer token"},
    403: {"description": "The read-only token cannot write"},
    413: {"description": "The body is over the size limit"},
    503: {"description": "Redis or Postgres is unreachable; nothing changed, retry later"},
}


def _guard_error(path: str, detail: str) -> dict[str, Any]:
    if path == "/v1/pagerduty":
        return {"status": "invalid event", "message": "Event object is invalid", "errors": [detail]}
    return {"detail": detail}


def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("answering 503", path=request.url.path, error=f"{exc.__class__.__name__}: {exc}")
    return JSONResponse({"detail": str(exc) or exc.__class__.__name__, "retryable": True}, status_code=503,
                        headers={"Retry-After": RETRY_AFTER_SECONDS})


def _broker_failed(request: Request, exc: Exception) -> JSONResponse:
    return _unavailable(request, TransientError(f"Redis failed while handing work on: {exc}"))


def _invalid(request: Request, exc: Exception) -> JSONResponse:
    errors: list[Any] = exc.errors() if isinstance(exc, (RequestValidationError, pydantic.ValidationError)) else []
    if request.url.path == "/v1/pagerduty":
        lines = pd.error_messages(list(errors)) or [str(exc)]
        return JSONResponse({"status": "invalid event", "message": "Event object is invalid", "errors": lines},
                            status_code=400)
    if not errors:
        return JSONResponse({"detail": str(exc)}, status_code=422)
    compact = [{"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", "invalid"), "type": e.get("type")}
               for e in errors[:20]]
    return JSONResponse({"detail": compact}, status_code=422)


def _internal(request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected error", path=request.url.path, error=f"{exc.__class__.__name__}: {exc}", exc_info=exc)
    return JSONResponse({"detail": "internal error; see the API's log"}, status_code=500)


def create_app(settings: Settings, config: ApiConfig | None = None) -> FastAPI:
    """The API for these settings (tokens, limits and bind checks come from api_config)."""
    config = config or api_config(settings)
    ctx = ApiContext.build(settings, config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        watch = None
        if settings.heartbeats.beat.max_age is not None:   # ERDU watches its own beat from here
            watch = asyncio.create_task(routes_heartbeats.watch_beat(ctx))
        yield
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        ctx.close()

    # FastAPIOffline serves Swagger UI and ReDoc from its own package: /docs works with no internet.
    app = FastAPIOffline(
        title="ERDU",
        version="1",
        summary="Events in, incidents out: the HTTP face of ERDU.",
        description="Send events (or Alertmanager / PagerDuty notifications), list incidents and act on them. "
                    "Every /v1 call needs `Authorization: Bearer <token>` when ERDU_API_TOKEN is set; "
                    "the read-only token ERDU_API_READ_TOKEN allows GET only. POST /v1/slack/interactions "
                    "takes no token: Slack's request signature authenticates it.",
        lifespan=lifespan,
    )
    app.state.erdu = ctx
    app.add_middleware(BodyGuard, max_bytes=config.max_body_bytes, max_depth=config.max_json_depth,
                       error_body=_guard_error, raw_paths=frozenset({routes_slack.INTERACTIONS_PATH}),
                       form_paths=console.is_form_path)
    app.add_exception_handler(TransientError, _unavailable)
    app.add_exception_handler(kombu.exceptions.OperationalError, _broker_failed)
    app.add_exception_handler(redis.RedisError, _broker_failed)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(pydantic.ValidationError, _invalid)
    app.add_exception_handler(InvalidEvent, _invalid)
    app.add_exception_handler(Exception, _internal)
    for module in (routes_events, routes_alertmanager, routes_pagerduty, routes_incidents, routes_silences,
                   routes_heartbeats, routes_oncall, routes_grouping):
        app.include_router(module.router, responses=COMMON_RESPONSES)
    # Slack's endpoint takes no bearer token (its signature authenticates it): no 401/403 of the token.
    app.include_router(routes_slack.router, responses={k: COMMON_RESPONSES[k] for k in (413, 503)})
    app.include_router(routes_health.router)
    from erdu_tasks.api import routes_failed  # `erdu failed ls|retry` over HTTP

    app.include_router(routes_failed.router, responses=COMMON_RESPONSES)
    from erdu_tasks.api import routes_celery_apps  # `erdu celery-apps` over HTTP

    app.include_router(routes_celery_apps.router, responses=COMMON_RESPONSES)
    console.mount(app, ctx)   # the web console: /, /login, /incidents, ... (api/console/)
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.responses import Response

    from erdu_tasks.store.metrics import build_registry

    registry = build_registry(settings.database_url, settings.redis_url,
                              channels=tuple(settings.escalation.channels))

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        """Prometheus metrics (counts only, no incident text), unauthenticated like /healthz."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
