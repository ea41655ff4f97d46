"""The console's pages: sign-in, incidents (list and one), failed tasks, silences, on call, heartbeats, runbooks and
learning, charts. The Celery apps pages: celery_apps.py."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from erdu_tasks.escalation import inhibition, silences
from erdu_tasks.monitors import heartbeats
from erdu_tasks.model import OPEN_STATUSES, Incident, Severity, Status
from erdu_tasks.store import failed, history, stats
from erdu_tasks.store import incidents as store
from erdu_tasks.tasks.pipeline import current_report, pattern_learning
from erdu_tasks.api.console import charts
from erdu_tasks.api.console.session import COOKIE, LOGIN_COOKIE, SESSION_SECONDS
from erdu_tasks.api.console.web import (SECURITY_HEADERS, Refused, console_of, current, flower_tasks, render,
                                        signed_in)

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 100
SORTS = ("severity", "newest", "oldest")
STATUS_CHOICES = ("open", "all", *(s.value for s in Status))
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
REPORT_CHARS = 200_000
SHIFTS_SHOWN = 4   # the on-call page's coming shifts per schedule (the one in force first)


# ------------------------------------------------------------------ sign-in


def _secure(request: Request) -> bool:
    public = console_of(request).ctx.config.public_url or ""
    return request.url.scheme == "https" or public.startswith("https://")


def _safe_next(value: str | None) -> str:
    value = value or "/incidents"
    return value if value.startswith("/") and not value.startswith("//") and "\\" not in value else "/incidents"


@router.get("/", response_class=HTMLResponse)
def home(request: Request) -> Response:
    """The console starts at the incident list."""
    return RedirectResponse("/incidents", status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str | None = None, error: str | None = None) -> Response:
    """The sign-in form (a token; a name when no token is configured)."""
    import secrets

    cons = console_of(request)
    nonce = secrets.token_urlsafe(16)
    response = render(request, "login.html.j2", person=None, open_mode=cons.accounts.open,
                      next=_safe_next(next), error=error, login_csrf=cons.signer.csrf("login:" + nonce))
    response.set_cookie(LOGIN_COOKIE, nonce, max_age=3600, httponly=True, samesite="strict",
                        secure=_secure(request), path="/login")
    return response


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    """Check the token (or name), then set the session cookie and go on."""
    from urllib.parse import parse_qsl

    cons = console_of(request)
    fields = dict(parse_qsl((await request.body()).decode("ascii", errors="replace"), keep_blank_values=True,
                            max_num_fields=20))
    nxt = _safe_next(fields.get("next"))
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    if not nonce or not cons.signer.csrf_ok("login:" + nonce, fields.get("csrf")):
        return RedirectResponse("/login?" + urlencode({"next": nxt, "error": "the sign-in form expired; try again"}),
                                status_code=303)
    if cons.accounts.open:
        found = cons.accounts.by_name((fields.get("name") or "").strip())
        problem = "a name is lower case letters, digits, '_', '.' or '-'"
    else:
        found = cons.accounts.by_token((fields.get("token") or "").strip())
        problem = "that token is not known"
    if found is None:
        return render(request, "login.html.j2", status=401, person=None, open_mode=cons.accounts.open, next=nxt,
                      error=problem, login_csrf=cons.signer.csrf("login:" + nonce))
    key, _ = found
    response = RedirectResponse(nxt, status_code=303)
    response.set_cookie(COOKIE, cons.signer.session(key, cons.accounts.token_tag(key)), max_age=SESSION_SECONDS,
                        httponly=True, samesite="strict", secure=_secure(request), path="/")
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    """End the session (the cookie is dropped)."""
    from erdu_tasks.api.console.web import form

    person = signed_in(request)
    await form(request, person)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


# ------------------------------------------------------------------ the incident list


def _filters(request: Request) -> dict[str, Any]:
    """The list's filters from the query string, checked (Refused 400 names the allowed values)."""
    q = request.query_params
    status = q.get("status") or "open"
    severity = q.get("severity") or ""
    service = (q.get("service") or "").strip()
    sort = q.get("sort") or "severity"
    if status not in STATUS_CHOICES:
        raise Refused(400, f"status {status!r} is not one of {', '.join(STATUS_CHOICES)}")
    if severity and severity not in Severity.__members__:
        raise Refused(400, f"severity {severity!r} is not one of {', '.join(Severity.__members__)}")
    if sort not in SORTS:
        raise Refused(400, f"sort {sort!r} is not one of {', '.join(SORTS)}")
    if len(service) > 128:
        raise Refused(400, "service is longer than 128 characters")
    return {"status": status, "severity": severity, "service": service, "sort": sort}


def _rows(request: Request, f: dict[str, Any]) -> list[Incident]:
    statuses = ([s.value for s in OPEN_STATUSES] if f["status"] == "open" else
                None if f["status"] == "all" else [f["status"]])
    with console_of(request).ctx.rt.db.transaction() as conn:
        return store.list_incidents(conn, statuses=statuses, severities=[f["severity"]] if f["severity"] else None,
                                    service=f["service"] or None, limit=PAGE_SIZE, order=f["sort"])


@router.get("/incidents", response_class=HTMLResponse)
def incident_list(request: Request) -> Response:
    """Incidents, filtered and sorted, kept up to date by server-sent events."""
    person = signed_in(request)
    f = _filters(request)
    return render(request, "incidents.html.j2", person=person, f=f, incidents=_rows(request, f),
                  statuses=STATUS_CHOICES, severities=list(Severity.__members__), sorts=SORTS,
                  query=urlencode({k: v for k, v in f.items() if v}), page_size=PAGE_SIZE)


@router.get("/incidents/rows", response_class=HTMLResponse)
def incident_rows(request: Request) -> Response:
    """The list's rows alone, for the live update."""
    signed_in(request)
    f = _filters(request)
    return render(request, "incident_rows.html.j2", incidents=_rows(request, f))


# ------------------------------------------------------------------ one incident


def _report_text(conn: Any, rt: Any, incident: Incident) -> tuple[str, bool] | None:
    """The report people read now as (Markdown, final?): the final one once written, else the interim
    "what we know so far" of an escalated incident (tasks/pipeline.py's current_report), else None."""
    found = current_report(conn, rt, incident.id)
    if found is None:
        return None
    data, text = found
    return text[:REPORT_CHARS] + ("\n…[cut]" if len(text) > REPORT_CHARS else ""), bool(data.get("final"))


def _failed_of(conn: Any, incident_id: str) -> list[dict[str, Any]]:
    return conn.execute(f"SELECT {failed.COLUMNS} FROM failed_tasks WHERE incident_id = %s ORDER BY id DESC LIMIT 50",
                        (incident_id,)).fetchall()


@router.get("/incidents/{incident_id}", response_class=HTMLResponse)
def incident_page(request: Request, incident_id: str) -> Response:
    """Everything about one incident: facts, evidence, actions and their outputs, report, relations, timeline."""
    person = signed_in(request)
    if not _ID.match(incident_id):
        raise Refused(404, "not an incident id")
    rt = console_of(request).ctx.rt
    with rt.db.transaction() as conn:
        incident = store.get_incident(conn, incident_id, with_timeline=True)
        if incident is None:
            raise Refused(404, f"no incident {incident_id}")
        related = incident.related if incident.related is not None else history.related_incidents(conn, incident)
        children = inhibition.children_of(conn, incident.id)
        failures = _failed_of(conn, incident.id)
        learning = pattern_learning(conn, rt, incident.fingerprint, rt.learning)
        report = _report_text(conn, rt, incident)
        matchers = [f"service={incident.service}"] if incident.service else [f"fingerprint={incident.fingerprint}"]
    tasks, tasks_problem = flower_tasks(rt.settings, incident.id)
    return render(request, "incident.html.j2", person=person, i=incident, related=related or [],
                  flower_tasks=tasks, flower_problem=tasks_problem,
                  children=children, failures=failures, learning=learning, report=report[0] if report else None,
                  report_final=bool(report and report[1]),
                  diagnosis=incident.diagnosis or {}, fix=incident.fix or {}, assessment=incident.assessment or {},
                  open=incident.is_open, silence_matchers="\n".join(matchers))


# ------------------------------------------------------------------ failed tasks, silences


@router.get("/failed", response_class=HTMLResponse)
def failed_page(request: Request) -> Response:
    """Stage tasks that failed for good: retry their incident or dismiss them."""
    person = signed_in(request)
    show_all = request.query_params.get("all") == "1"
    where = "" if show_all else f" WHERE {failed.OPEN}"
    with console_of(request).ctx.rt.db.transaction() as conn:
        rows = conn.execute(f"SELECT {failed.COLUMNS} FROM failed_tasks{where} ORDER BY id DESC LIMIT 500").fetchall()
    return render(request, "failed.html.j2", person=person, rows=rows, show_all=show_all)


@router.get("/silences", response_class=HTMLResponse)
def silences_page(request: Request) -> Response:
    """Pending and active silences, what they hold, and a form for a new one (admins)."""
    person = signed_in(request)
    now = datetime.now(timezone.utc)
    rt = console_of(request).ctx.rt
    with rt.db.transaction() as conn:
        found = silences.list_silences(conn, now=now)
        counts = silences.held_counts(conn, [s.id for s in found])
    rows = [{"s": s, "state": s.state(now, rt.settings.escalation.time_intervals).value,
             "held": counts.get(s.id, (0, 0))} for s in found]
    return render(request, "silences.html.j2", person=person, rows=rows,
                  silence_matchers=request.query_params.get("matchers", ""))


# ------------------------------------------------------------------ on call, heartbeats


@router.get("/oncall", response_class=HTMLResponse)
def oncall_page(request: Request) -> Response:
    """Per schedule: who is on call now, since when and by what, the next handoff (the rota's overview), and the
    coming shifts."""
    person = signed_in(request)
    rota = console_of(request).ctx.rt.rota
    now = datetime.now(timezone.utc)
    rows = [{**row, "time_zone": rota.schedule(row["schedule"]).time_zone,
             "shifts": [] if row["error"] else rota.shifts(row["schedule"], now, SHIFTS_SHOWN)}
            for row in rota.overview(now)]
    return render(request, "oncall.html.j2", person=person, rows=rows, now=now)


@router.get("/heartbeats", response_class=HTMLResponse)
def heartbeats_page(request: Request) -> Response:
    """Every heartbeat: its period and grace, when it was last seen, when it is due, and whether it is late now."""
    person = signed_in(request)
    now = datetime.now(timezone.utc)
    with console_of(request).ctx.rt.db.transaction() as conn:
        found = heartbeats.list_heartbeats(conn)
    return render(request, "heartbeats.html.j2", person=person, rows=[(b, b.state_at(now)) for b in found], now=now)


# ------------------------------------------------------------------ runbooks and learning, charts


@router.get("/runbooks", response_class=HTMLResponse)
def runbooks_page(request: Request) -> Response:
    """The runbooks loaded, and per pattern: runbook success rates and whether auto-resolution applies, and why."""
    person = signed_in(request)
    rt = console_of(request).ctx.rt
    with rt.db.transaction() as conn:
        patterns = [{"row": row, "learning": pattern_learning(conn, rt, row.key, rt.learning)}
                    for row in stats.by_fingerprint(conn, limit=50)]
    return render(request, "runbooks.html.j2", person=person, runbooks=rt.runbooks.runbooks, patterns=patterns,
                  lcfg=rt.learning)


RANGES = {"24h": (timedelta(hours=24), "hour"), "7d": (timedelta(days=7), "day"),
          "30d": (timedelta(days=30), "day"), "180d": (timedelta(days=180), "week")}


def _buckets(since: datetime, now: datetime, bucket: str) -> list[datetime]:
    step = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}[bucket]
    start = since.replace(minute=0, second=0, microsecond=0)
    if bucket != "hour":
        start = start.replace(hour=0)
    if bucket == "week":
        start -= timedelta(days=start.weekday())
    out = []
    while start <= now:
        out.append(start)
        start += step
    return out


@router.get("/charts", response_class=HTMLResponse)
def charts_page(request: Request) -> Response:
    """MTTA and MTTR over time (per hour, day or week of detection), drawn as SVG on the server."""
    person = signed_in(request)
    span = request.query_params.get("range") or "30d"
    if span not in RANGES:
        raise Refused(400, f"range {span!r} is not one of {', '.join(RANGES)}")
    width, bucket = RANGES[span]
    now = datetime.now(timezone.utc)
    since = now - width
    with console_of(request).ctx.rt.db.transaction() as conn:
        rows = {datetime.fromisoformat(r.key).astimezone(timezone.utc): r
                for r in stats.over_time(conn, since=since, bucket=bucket)}
        severities = stats.by_severity(conn, since=since)
        total = stats.overall(conn, since=since)
    fmt = "%H:%M" if bucket == "hour" else "%m-%d"
    points = []
    for at in _buckets(since, now, bucket):
        row = rows.get(at)
        points.append((at.strftime(fmt), row))
    mtta = charts.line_chart("MTTA (minutes from detection to a person's acknowledgement)",
                             [charts.Point(label, r.mtta / 60 if r and r.mtta is not None else None,
                                           f" over {r.acknowledged} acknowledged" if r else "")
                              for label, r in points], empty="no incident acknowledged by a person in this period")
    mttr = charts.line_chart("MTTR (minutes from detection to resolution)",
                             [charts.Point(label, r.mttr / 60 if r and r.mttr is not None else None,
                                           f" over {r.resolved} resolved" if r else "")
                              for label, r in points], empty="no incident resolved in this period")
    volume = charts.line_chart("Incidents detected", [charts.Point(label, float(r.incidents) if r else 0.0)
                                                      for label, r in points], unit="")
    return render(request, "charts.html.j2", person=person, span=span, ranges=list(RANGES), mtta=mtta, mttr=mttr,
                  volume=volume, severities=severities, total=total, bucket=bucket)


__all__ = ["router", "SECURITY_HEADERS", "current"]
