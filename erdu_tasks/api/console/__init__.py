"""The web console: the on-call's view of incidents, served by the API.

Server-rendered pages (Jinja2 templates in templates/, autoescaped), a little script and CSS in static/
(shipped in the package: nothing from a CDN, it works offline), live updates by server-sent events.
People sign in with their token (session.py); what each role may do is decided in web.py; every
action calls the same code as the CLI and the API (actions.py). The pages: pages.py; charts: charts.py; the
Celery apps' pages and retries: celery_apps.py.

Imports: the API's context and auth (and the Celery apps routes), tasks (people actions, the learning summary,
Celery retries), escalation (silences, inhibition), monitors (heartbeats), store; nothing imports the console
but the API's app.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from urllib.parse import urlencode

from erdu_tasks.api.context import ApiContext
from erdu_tasks.api.console import actions, celery_apps, live, pages
from erdu_tasks.api.console.session import Accounts
from erdu_tasks.api.console.web import Console, NotSignedIn, Refused, render

STATIC = Path(__file__).parent / "static"
STATIC_PATH = "/console-static"


def _not_signed_in(request: Request, exc: Exception) -> Response:
    if request.method != "GET" or request.url.path.startswith("/events/") or request.url.path == "/silences/preview":
        return JSONResponse({"detail": "sign in first"}, status_code=401)
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)


def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refused)
    return render(request, "error.html.j2", status=exc.status, message=exc.message, code=exc.status)


def mount(app: FastAPI, ctx: ApiContext) -> None:
    """Serve the console from this app: its pages, actions, event stream and static files."""
    app.state.console = Console(ctx, Accounts(ctx.rt.settings), pulse=live.Pulse(ctx.rt.db))
    app.add_exception_handler(NotSignedIn, _not_signed_in)
    app.add_exception_handler(Refused, _refused)
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC), name="console-static")
    for module in (pages, actions, celery_apps, live):
        app.include_router(module.router)


def is_form_path(path: str) -> bool:
    """True for the console's paths, whose browser forms post form-encoded bodies (the API's stay JSON)."""
    return not path.startswith("/v1/")
