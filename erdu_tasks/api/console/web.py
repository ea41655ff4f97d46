"""The console's plumbing: templates (autoescaped, control characters made visible), who is asking, forms.

Every page and action of the console goes through `signed_in` / `may` (roles) and `form` (the CSRF check),
and renders through `render`: one place for what a person may do and how event text reaches the page.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl, quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from erdu_tasks.settings.people import PersonRole
from erdu_tasks.api.context import ApiContext
from erdu_tasks.api.console.session import COOKIE, Accounts, Person, Signer, load_key

# C0 controls but tab and newline, DEL, C1 controls, and the bidirectional overrides and isolates that can
# make text read in another order than it is stored ("Trojan source").
_INVISIBLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")

# What the browser may load and run on a console page: only what ERDU serves, no inline script.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
                               "object-src 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def inert(value: Any) -> Any:
    """Text as it will be shown: control characters and bidi overrides as visible \\xNN / \\uNNNN escapes."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return _INVISIBLE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                              else f"\\u{ord(m.group()):04x}", value)
    return value


def _when(value: Any) -> str:
    if not isinstance(value, datetime):
        return "-" if value is None else str(value)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def seconds_text(seconds: Any) -> str:
    """A duration for people: 45s, 12m 5s, 3h 20m, 2d 4h."""
    if seconds is None:
        return "-"
    s = int(round(float(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def _age(value: Any) -> str:
    if not isinstance(value, datetime):
        return "-"
    return seconds_text((datetime.now(timezone.utc) - value).total_seconds())


def _epoch(value: Any) -> str:
    try:
        return _when(datetime.fromtimestamp(float(value), timezone.utc))
    except (TypeError, ValueError, OverflowError, OSError):
        return "-"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{float(value):.0%}"


templates = Environment(loader=PackageLoader("erdu_tasks.api.console", "templates"),
                        autoescape=select_autoescape(default=True, default_for_string=True),
                        finalize=inert, trim_blocks=True, lstrip_blocks=True)
def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str, sort_keys=True)


templates.filters.update(when=_when, epoch=_epoch, age=_age, dur=seconds_text, pct=_pct, inert=inert, pretty=_pretty,
                         q=lambda v: quote(str(v), safe=""))


class NotSignedIn(Exception):
    """No valid session: pages send the person to sign in, streams and JSON answer 401."""


class Refused(Exception):
    """A signed-in person asked for something their role or the request does not allow."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Console:
    """Built once per API process: the accounts, the cookie signer and the Flower address."""

    ctx: ApiContext
    accounts: Accounts
    pulse: Any = None
    _signer: Signer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def signer(self) -> Signer:
        """The signer, its key read (or made) in Postgres on first use."""
        with self._lock:
            if self._signer is None:
                with self.ctx.rt.db.transaction() as conn:
                    self._signer = Signer(load_key(conn))
            return self._signer

    def flower_url(self, request: Request) -> str:
        """Where people reach Flower: its configured address, or this page's host when it listens on all."""
        section = self.ctx.rt.settings.flower
        host = section.address
        if host in ("0.0.0.0", "::", ""):
            host = request.url.hostname or "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{section.port}"


FLOWER_TIMEOUT_SECONDS = 1.0


def flower_tasks(settings: Any, incident_id: str, limit: int = 30) -> tuple[list[dict[str, Any]], str | None]:
    """The incident's tasks as Flower knows them (its /api/tasks search by the id), newest first; or why not.

    Flower keeps tasks in memory only, from its start: older tasks are not there (Postgres keeps the failed)."""
    import httpx

    section = settings.flower
    host = "127.0.0.1" if section.address in ("0.0.0.0", "::", "") else section.address
    auth = (section.user, section.password.get_secret_value()) if section.user and section.password else None
    try:
        reply = httpx.get(f"http://{'[' + host + ']' if ':' in host else host}:{section.port}/api/tasks",
                          params={"search": incident_id, "limit": limit, "sort_by": "-received"}, auth=auth,
                          timeout=FLOWER_TIMEOUT_SECONDS)
        if reply.status_code == 401 and auth is None:
            return [], ("Flower lists tasks over its API only with a user and password (the flower section's "
                        "user and password)")
        reply.raise_for_status()
        found = reply.json()
    except (httpx.HTTPError, ValueError) as exc:
        return [], f"Flower did not answer ({exc.__class__.__name__})"
    if not isinstance(found, dict):
        return [], "Flower answered something else than a task list"
    tasks = [{"uuid": str(uuid), "name": str(t.get("name") or "?"), "state": str(t.get("state") or "?"),
              "worker": str(t.get("worker") or "-"), "received": t.get("received"), "runtime": t.get("runtime")}
             for uuid, t in found.items() if isinstance(t, dict)]
    return tasks, None


def console_of(request: Request) -> Console:
    """The process's Console."""
    return request.app.state.console


def current(request: Request) -> Person | None:
    """The signed-in person, or None."""
    cons = console_of(request)
    found = cons.signer.read(request.cookies.get(COOKIE, ""))
    if found is None:
        return None
    key, tag, nonce = found
    person = cons.accounts.current(key, tag)
    return Person(person.key, person.role, person.display_name, nonce) if person else None


def signed_in(request: Request) -> Person:
    """Dependency: the signed-in person (NotSignedIn otherwise)."""
    person = current(request)
    if person is None:
        raise NotSignedIn()
    return person


def may(person: Person, needed: PersonRole, what: str) -> None:
    """Refused (403) unless the person's role includes `needed`."""
    if not person.may(needed):
        raise Refused(403, f"{person.key} is a {person.role.value}: {what} needs the {needed.value} role")


async def form(request: Request, person: Person) -> dict[str, str]:
    """The posted form's fields after the CSRF check (Refused 403 when the token is missing or wrong)."""
    body = (await request.body()).decode("ascii", errors="replace")
    fields = dict(parse_qsl(body, keep_blank_values=True, max_num_fields=200))
    presented = fields.pop("csrf", None) or request.headers.get("x-csrf-token")
    if not console_of(request).signer.csrf_ok(person.nonce, presented):
        raise Refused(403, "the form's CSRF token is missing or stale: reload the page and try again")
    return fields


FLASH = "erdu_flash"   # the outcome of the last action, shown once on the next page (never in the URL)
FLASH_CHARS = 600


def _flash(request: Request) -> dict[str, str]:
    raw = request.cookies.get(FLASH, "")
    try:
        found = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))) if raw else {}
    except ValueError:
        return {}
    return {k: str(v)[:FLASH_CHARS] for k, v in found.items() if k in ("done", "error")} \
        if isinstance(found, dict) else {}


def render(request: Request, name: str, status: int = 200, **values: Any) -> HTMLResponse:
    """A page of the console, with the person, their CSRF token, the navigation and the last action's outcome."""
    person = values.pop("person", None) or current(request)
    cons = console_of(request)
    flash = _flash(request)
    html = templates.get_template(name).render(
        person=person, csrf=cons.signer.csrf(person.nonce) if person else "", path=request.url.path,
        flower=cons.flower_url(request), roles=PersonRole,
        **{"done": flash.get("done"), "error": flash.get("error"), **values})
    response = HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)
    if flash:
        response.delete_cookie(FLASH, path="/")
    return response


def back(to: str, message: str | None = None, error: str | None = None) -> Response:
    """Redirect after a POST to a console page, whose next rendering shows the one-line outcome."""
    if not to.startswith("/") or to.startswith("//") or "\\" in to:
        to = "/incidents"
    response = RedirectResponse(to, status_code=303, headers=SECURITY_HEADERS)
    outcome = {k: v[:FLASH_CHARS] for k, v in (("done", message), ("error", error)) if v}
    if outcome:
        value = base64.urlsafe_b64encode(json.dumps(outcome).encode()).decode().rstrip("=")
        response.set_cookie(FLASH, value, max_age=120, httponly=True, samesite="strict", path="/")
    return response
