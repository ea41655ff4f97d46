"""Escalation service: durable runs in Postgres, holds, the payload, and the pipeline's hooks.

- `open_run` opens a run for an incident; `escalation.start.escalate` calls it in the transaction
  that escalates the incident, and `escalation.sweep.Escalator.sweep(now)` then plans and delivers its steps.
- `gate_before_assess` (the commander) and `gate_before_fix` (the fixer) ask the gate list: a silence
  keeps the incident out of the pipeline (a hold the sweeper releases when the silence ends); the
  commander also links children to an open parent (inhibition).
- `on_resolved` (the resolver's close) stops the run, queues resolve notices (PagerDuty
  resolve) for every channel that was notified, and re-checks the incident's children.

Nothing here waits in memory: every due time is a Postgres row, so a restarted worker or
beat loses no step. Time is always the `now` passed in (tests inject it).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import structlog
from psycopg.types.json import Jsonb

from erdu_tasks.errors import ConfigError
from erdu_tasks.escalation import inhibition, silences
from erdu_tasks.escalation.schedules import CalendarUnreadable, Rota
from erdu_tasks.escalation.gates import GateName, Gates, Outcome, load_facts
from erdu_tasks.store import incidents as store
from erdu_tasks.store.db import later
from erdu_tasks.catalog import Catalog
from erdu_tasks.escalation.policy import EscalationConfig
from erdu_tasks.model import Incident, Status
from erdu_tasks.names import PIPELINE_STATUSES, Stage
from erdu_tasks.escalation.channels import AttemptedFix, Notification, NotificationKind
from erdu_tasks.fixer.capture import summary as capture_summary

log = structlog.get_logger("erdu.escalation")

ACTOR = "escalation"
_PIPELINE_STATUSES = tuple(sorted(s.value for s in PIPELINE_STATUSES))


def utcnow() -> datetime:
    """The current time, timezone-aware (the default clock)."""
    return datetime.now(timezone.utc)


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class SweepOptions:
    """How the sweeper runs: its beat interval, when a stuck incident escalates, batch size."""

    sweep_interval: float = 5.0
    stuck_after: timedelta | None = timedelta(minutes=15)
    batch: int = 200


def sweep_options(section: EscalationConfig | Mapping[str, Any] | None) -> SweepOptions:
    """The sweeper's options from the escalation section."""
    config = EscalationConfig.from_settings_section(section)
    return SweepOptions(config.sweep_interval.total_seconds(), config.stuck_after, config.sweep_batch)


def escalation_config(section: EscalationConfig | Mapping[str, Any] | None, alerts_dir: Any) -> EscalationConfig:
    """The escalation section with file channels writing to alerts_dir (a raw dict is validated)."""
    return EscalationConfig.from_settings_section(section, alerts_dir)


def check_settings(settings: Any, catalog: Catalog) -> None:
    """Validate the whole escalation section at start-up; ConfigError names the place and the reason."""
    config = escalation_config(settings.escalation, settings.alerts_dir)
    config.check_policy_names({name: s.escalation_policy for name, s in catalog.services.items()})
    oncall = getattr(settings, "oncall", None)
    if oncall is not None:
        try:
            Rota(oncall, settings.people).check()
        except CalendarUnreadable as exc:
            raise ConfigError(f"oncall.schedules: {exc}") from None


# --------------------------------------------------------------------------- payload


def _output_text(entry: Mapping[str, Any]) -> str:
    lines = [str(entry.get("detail") or "").strip()]
    output = entry.get("output")
    if isinstance(output, Mapping):
        for key, value in output.items():
            if value in (None, "", [], {}):
                continue
            text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
            if "\n" in text.strip():
                lines.append(f"{key}:")
                lines += [f"  {line}" for line in text.strip().splitlines()]
            else:
                lines.append(f"{key}: {text}")
    elif output:
        lines.append(str(output))
    if entry.get("reused"):
        lines.append("(result of an earlier run of this step, not run again)")
    return "\n".join(line for line in lines if line)


def attempted_fixes(incident: Incident) -> list[AttemptedFix]:
    """What the fixer tried, with outputs: runbook steps, validation, rollback (StepOutcome dicts).

    The one converter of the fixer's record into a payload's fixes; without a fix record, the
    incident's resolution actions.
    """
    fix = incident.fix or {}
    runbook = fix.get("runbook")
    prefix = f"{runbook}: " if runbook else ""
    out: list[AttemptedFix] = []
    captured = fix.get("capture")
    if isinstance(captured, Mapping):   # the state before repair comes first: what the restart destroyed
        out.append(AttemptedFix(prefix + f"captured state before {captured.get('before') or 'repair'}",
                                bool(captured.get("process")), capture_summary(captured)))
    previous = fix.get("previous_capture")
    if isinstance(previous, Mapping):   # a crash loop: the service as it was before its latest restart
        out.append(AttemptedFix(f"captured state before the latest restart ({previous.get('incident_id')})",
                                bool(previous.get("process")), capture_summary(previous)))
    for entry in fix.get("actions") or incident.resolution_actions or []:
        if isinstance(entry, Mapping):
            ok = entry.get("ok")
            out.append(AttemptedFix(prefix + str(entry.get("action") or entry.get("step") or "action"),
                                    ok if isinstance(ok, bool) else None, _output_text(entry)))
    validation = fix.get("validation")
    if isinstance(validation, Mapping):
        ok = validation.get("ok")
        out.append(AttemptedFix(prefix + "validation", ok if isinstance(ok, bool) else None,
                                str(validation.get("detail") or "")))
    for entry in fix.get("rollback") or []:
        if isinstance(entry, Mapping):
            ok = entry.get("ok")
            out.append(AttemptedFix(prefix + "rollback " + str(entry.get("action") or ""),
                                    ok if isinstance(ok, bool) else None, _output_text(entry)))
    return out


def build_notification(config: EscalationConfig, incident: Incident, *, reason: str, level: int, repeat: int,
                       kind: NotificationKind, now: datetime) -> Notification:
    """The payload a responder gets: title, severity, reason, systems, root cause, fixes, how to see it."""
    return Notification.from_incident(
        incident, reason=reason, level=max(level, 1), repeat=repeat, kind=kind,
        attempted_fixes=attempted_fixes(incident), see_command=config.see_command_for(incident.id),
        url=config.url_for(incident.id), now=now,
    )


# --------------------------------------------------------------------------- runs (in the caller's transaction)


def open_run(conn: psycopg.Connection, incident_id: str, *, reason: str, stage: str | None = None,
             now: datetime | None = None) -> datetime:
    """Open a new escalation run for the incident (stopping a live one); its level 1 is due now."""
    now = now or utcnow()
    conn.execute(
        "UPDATE escalation_runs SET stopped_at = %s, stop_reason = 'superseded', state = 'stopped', next_at = NULL"
        " WHERE incident_id = %s AND stopped_at IS NULL",
        (now, incident_id),
    )
    conn.execute(
        "INSERT INTO escalation_runs (incident_id, started_at, reason, stage, next_at)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (incident_id, now, reason[:2000], stage, now),
    )
    return now


def stop_run(conn: psycopg.Connection, run: Mapping[str, Any], why: str, state: str, now: datetime,
              worker: str | None) -> bool:
    row = conn.execute(
        "UPDATE escalation_runs SET stopped_at = %s, stop_reason = %s, state = %s, next_at = NULL"
        " WHERE incident_id = %s AND started_at = %s AND stopped_at IS NULL RETURNING level",
        (now, why, state, run["incident_id"], run["started_at"]),
    ).fetchone()
    if row is not None:
        store.add_timeline(conn, run["incident_id"], actor=ACTOR, worker=worker,
                           what=f"escalation stopped at level {row['level']}: {why}",
                           details={"started_at": run["started_at"].isoformat(), "state": state})
    return row is not None


# --------------------------------------------------------------------------- holds


def hold(conn: psycopg.Connection, incident: Incident, *, kind: str, stage: str, now: datetime,
          worker: str | None, silence: silences.Silence | None = None, parent: Incident | None = None) -> bool:
    """Keep the incident quiet; True when this is news (a new or changed hold), written on the timeline."""
    silence_id = silence.id if silence else None
    parent_id = parent.id if parent else None
    until = silence.end() if silence else None
    live = conn.execute("SELECT * FROM incident_holds WHERE incident_id = %s AND released_at IS NULL FOR UPDATE",
                        (incident.id,)).fetchone()
    if live is not None and live["kind"] == kind and live["silence_id"] == silence_id \
            and live["parent_id"] == parent_id:
        return False
    if live is not None:
        conn.execute("UPDATE incident_holds SET kind = %s, silence_id = %s, parent_id = %s, until = %s"
                     " WHERE id = %s", (kind, silence_id, parent_id, until, live["id"]))
    else:
        conn.execute("INSERT INTO incident_holds (incident_id, kind, silence_id, parent_id, stage, held_at, until)"
                     " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                     (incident.id, kind, silence_id, parent_id, stage, now, until))
    if silence is not None:
        what = (f"silenced by {silence.id} ({silence.describe()}) until {silence.end().isoformat()}: "
                f"counted, but no fix and no notification — {silence.comment[:80]}")
    else:
        what = f"held: parent {parent_id} is open, so this incident is not escalated on its own"
    store.add_timeline(conn, incident.id, actor=ACTOR, worker=worker, what=what,
                       details={"hold": kind, "silence_id": silence_id, "parent_id": parent_id,
                                "author": silence.author if silence else None})
    return True


ASSESS_GATES = (GateName.SILENCE, GateName.INHIBITION)
FIX_GATES = (GateName.SILENCE,)


def gate_before_assess(conn: psycopg.Connection, gates: Gates, incident: Incident, *, worker: str | None,
                       now: datetime | None = None) -> bool:
    """The commander's gate: True when a silence holds the incident (park it; the sweeper resumes it).

    An inhibiting parent does not hold the pipeline here: the incident is linked to it and goes on.
    """
    now = now or utcnow()
    decision = gates.check(load_facts(conn, gates, incident, now, ASSESS_GATES), now, ASSESS_GATES)
    if decision.outcome is Outcome.SILENCED:
        hold(conn, incident, kind="silence", stage=Stage.ASSESS, now=now, worker=worker, silence=decision.silence)
        return True
    if decision.outcome is Outcome.INHIBITED and decision.rule is not None and decision.parent is not None:
        inhibition.link(conn, incident, decision.parent, decision.rule, worker=worker)
    return False


def link_children_after_assess(conn: psycopg.Connection, gates: Gates, incident: Incident, *,
                               worker: str | None) -> list[str]:
    """The commander's other half of correlation: an assessed parent (a P1, by default) adopts the open
    incidents of its dependants that came before it; the sweeper then holds their escalation."""
    gate = gates[GateName.INHIBITION]
    rules = gates.inhibit_rules
    dependants_of = getattr(gate, "dependants_of", None)
    if not rules or dependants_of is None:
        return []
    return inhibition.adopt_children(conn, incident, rules, dependants_of, worker=worker)


def gate_before_fix(conn: psycopg.Connection, gates: Gates, incident: Incident, *, worker: str | None,
                    now: datetime | None = None) -> bool:
    """The fixer's gate: True when a silence that began after the commander's check holds the incident."""
    now = now or utcnow()
    decision = gates.check(load_facts(conn, gates, incident, now, FIX_GATES), now, FIX_GATES)
    if decision.outcome is not Outcome.SILENCED:
        return False
    hold(conn, incident, kind="silence", stage=Stage.FIX, now=now, worker=worker, silence=decision.silence)
    return True


def release_hold(conn: psycopg.Connection, row: Mapping[str, Any], incident: Incident | None, why: str,
             now: datetime, worker: str | None) -> tuple[str, str] | None:
    """End a hold; returns (incident id, stage) when a pipeline stage must be re-driven."""
    done = conn.execute("UPDATE incident_holds SET released_at = %s, release_reason = %s"
                        " WHERE id = %s AND released_at IS NULL RETURNING id", (now, why, row["id"])).fetchone()
    if done is None or incident is None or not incident.is_open:
        return None
    stage = row["stage"]
    if stage == "escalate" or incident.status is Status.ESCALATED:
        # An incident escalated while held (whatever stage held it) must get its run back now.
        if incident.status is Status.ESCALATED:
            last = conn.execute("SELECT reason, stage FROM escalation_runs WHERE incident_id = %s"
                                " ORDER BY started_at DESC LIMIT 1", (incident.id,)).fetchone()
            reason = f"{last['reason']} ({why})" if last else why
            open_run(conn, incident.id, reason=reason, stage=last["stage"] if last else None, now=now)
            store.add_timeline(conn, incident.id, actor=ACTOR, worker=worker, what=f"{why}: escalation resumes")
        else:
            store.add_timeline(conn, incident.id, actor=ACTOR, worker=worker,
                               what=f"{why}; incident is {incident.status.value}, nothing to resume")
        return None
    store.add_timeline(conn, incident.id, actor=ACTOR, worker=worker, what=f"{why}: resuming {stage}")
    return incident.id, stage


def on_resolved(conn: psycopg.Connection, incident: Incident, *, worker: str | None,
                now: datetime | None = None) -> bool:
    """The resolver's close: stop the escalation, queue resolve notices, re-check children.

    Returns True when people had been notified of the incident (they get the resolve notice)."""
    return on_resolved_later(conn, incident, worker=worker, now=now)().notified


@dataclass(frozen=True)
class Resolved:
    """What on_resolved did: whether people had been notified, and whether it wrote the incident's timeline."""

    notified: bool
    wrote_timeline: bool


def on_resolved_later(conn: psycopg.Connection, incident: Incident, *, worker: str | None,
                      now: datetime | None = None) -> Callable[[], Resolved]:
    """on_resolved with its statements sent now (one round trip with whatever else is queued on a pipelined
    connection); called, it reads their answers and does the rest (each part of the rest only when owed)."""
    now = now or utcnow()
    run_cur = conn.execute(
        "UPDATE escalation_runs SET stopped_at = %s, stop_reason = 'resolved', state = 'resolved', next_at = NULL"
        " WHERE incident_id = %s AND stopped_at IS NULL RETURNING started_at, level",
        (now, incident.id),
    )
    conn.execute("UPDATE incident_holds SET released_at = %s, release_reason = 'resolved'"
                 " WHERE incident_id = %s AND released_at IS NULL", (now, incident.id))
    notified_cur = conn.execute(
        "SELECT DISTINCT d.channel FROM deliveries d JOIN escalation_steps s ON s.id = d.step_id"
        " WHERE s.incident_id = %s AND s.kind IN ('trigger', 'page') AND d.ok ORDER BY d.channel", (incident.id,))
    children = inhibition.children_of_later(conn, incident.id)

    def rest() -> Resolved:
        run = run_cur.fetchone()
        wrote = run is not None
        if run is not None:
            store.add_timeline(conn, incident.id, actor=ACTOR, worker=worker,
                               what=f"escalation stopped at level {run['level']}: resolved")
        notified = [r["channel"] for r in notified_cur.fetchall()]
        if notified:
            last = conn.execute("SELECT started_at, level FROM escalation_runs WHERE incident_id = %s"
                                " ORDER BY started_at DESC LIMIT 1", (incident.id,)).fetchone()
            queued = conn.execute(
                "INSERT INTO escalation_steps (step_key, kind, incident_id, started_at, level, repeat, channels,"
                " payload, due_at, sent_at, next_at) VALUES (%s, 'resolve', %s, %s, 0, 0, %s, %s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING RETURNING id",
                (f"{incident.id}:resolve", incident.id, last["started_at"] if last else None, Jsonb(notified),
                 Jsonb({"level": int(last["level"]) if last else 1}), now, now, now),
            ).fetchone()
            if queued is not None:
                wrote = True
                store.add_timeline(conn, incident.id, actor=ACTOR, worker=worker,
                                   what=f"resolve notice queued for {', '.join(notified)}")
        for child in children():
            wrote = True
            _recheck_child(conn, incident, child, now, worker)
        return Resolved(notified=bool(notified), wrote_timeline=wrote)

    return later(rest)


def queue_fyi(conn: psycopg.Connection, incident: Incident, config: EscalationConfig, *, reason: str,
              policy_name: str | None, worker: str | None, now: datetime | None = None) -> list[str]:
    """Queue an FYI to the first level of the incident's policy (the sweeper delivers it); once per incident.
    Returns the channels it goes to (none when it was queued before)."""
    now = now or utcnow()
    channels = list(config.policy_for(incident.severity, incident.service, policy_name).levels[0].channels)
    queued = conn.execute(
        "INSERT INTO escalation_steps (step_key, kind, incident_id, level, repeat, channels, payload, due_at,"
        " sent_at, next_at) VALUES (%s, 'fyi', %s, 1, 0, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING id",
        (f"{incident.id}:fyi", incident.id, Jsonb(channels), Jsonb({"reason": reason[:2000], "level": 1}),
         now, now, now),
    ).fetchone()
    if queued is None:
        return []
    store.add_timeline(conn, incident.id, actor=ACTOR, worker=worker, details={"channels": channels},
                       what=f"FYI queued for {', '.join(channels)} (policy level 1): {reason}"[:500])
    return channels


def _recheck_child(conn: psycopg.Connection, parent: Incident, child: Mapping[str, Any], now: datetime,
                   worker: str | None) -> None:
    label = f"child {child['id']} ({child['severity']} {child['service'] or '-'}, {child['status']})"
    if child["status"] in ("resolved", "closed"):
        store.add_timeline(conn, parent.id, actor=ACTOR, worker=worker, what=f"{label}: already {child['status']}")
        return
    live = conn.execute("SELECT * FROM incident_holds WHERE incident_id = %s AND released_at IS NULL"
                        " AND kind = 'inhibit' AND parent_id = %s FOR UPDATE", (child["id"], parent.id)).fetchone()
    if live is not None:
        current = store.get_incident(conn, child["id"])
        release_hold(conn, live, current, f"parent {parent.id} resolved", now, worker)
        outcome = "escalating on its own" if current and current.status is Status.ESCALATED else "released"
    else:
        outcome = "still open, continues on its own path"
    store.add_timeline(conn, parent.id, actor=ACTOR, worker=worker, what=f"{label} re-checked: {outcome}")


# --------------------------------------------------------------------------- people paged


def paged_people(conn: psycopg.Connection, incident_id: str) -> list[dict[str, Any]]:
    """Who was paged about the incident, in order: person, via, level, when (from the steps' payloads)."""
    rows = conn.execute(
        "SELECT kind, level, repeat, sent_at, payload FROM escalation_steps WHERE incident_id = %s"
        " AND kind IN ('trigger', 'page') AND payload ? 'paged' ORDER BY sent_at, id", (incident_id,)).fetchall()
    return [{"person": page["person"], "via": page["via"], "level": row["level"], "repeat": row["repeat"],
             "kind": row["kind"], "at": row["sent_at"], "deliveries": page.get("deliveries", [])}
            for row in rows for page in row["payload"].get("paged") or [] if page.get("deliveries")]


def on_acknowledged(conn: psycopg.Connection, incident_id: str, who: str, *, actor: str,
                    now: datetime | None = None) -> None:
    """An escalated incident was acknowledged: its escalation stops now (no later level is planned, and steps
    already claimed are cancelled by the sweeper), and the timeline says whether the acker was paged."""
    run = conn.execute("SELECT incident_id, started_at FROM escalation_runs WHERE incident_id = %s"
                       " AND stopped_at IS NULL", (incident_id,)).fetchone()
    if run is not None:
        stop_run(conn, run, "acknowledged", "acknowledged", now or utcnow(), None)
    note_ack(conn, incident_id, who, actor=actor)


def note_ack(conn: psycopg.Connection, incident_id: str, who: str, *, actor: str) -> None:
    """On an acknowledgement, say on the timeline whether the acker is one of the people paged (and when)."""
    paged = paged_people(conn, incident_id)
    if not paged:
        return
    mine = [p for p in paged if p["person"] == who]
    if mine:
        last = mine[-1]
        where = "reassigned" if last["kind"] == "page" else f"level {last['level']}"
        what = (f"acknowledged by {who}, who was paged ({where}, {last['via']}) at "
                f"{last['at'].isoformat(timespec='seconds')}")
    else:
        others = ", ".join(dict.fromkeys(p["person"] for p in paged))
        what = f"acknowledged by {who}, who was not paged (paged: {others})"
    store.add_timeline(conn, incident_id, actor=actor, what=what,
                       details={"acknowledged_by": who, "paged": [p["person"] for p in paged], "was_paged": bool(mine)})


# --------------------------------------------------------------------------- queries for people and tasks


def stuck_incidents(conn: psycopg.Connection, *, now: datetime, after: timedelta, limit: int = 100) -> list[dict]:
    """Incidents in a pipeline stage for longer than `after`, not held by (or just released from) a silence."""
    return conn.execute(
        """
        SELECT i.id, i.status, i.status_changed_at FROM incidents i
        WHERE i.status = ANY(%(statuses)s) AND i.status_changed_at < %(since)s
          AND NOT EXISTS (SELECT 1 FROM incident_holds h WHERE h.incident_id = i.id
                          AND (h.released_at IS NULL OR h.released_at > %(since)s))
        ORDER BY i.status_changed_at LIMIT %(limit)s
        """,
        {"statuses": list(_PIPELINE_STATUSES), "since": now - after, "limit": limit},
    ).fetchall()
