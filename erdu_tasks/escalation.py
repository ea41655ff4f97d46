"""Escalation service: durable runs and steps in Postgres, swept by beat, delivered through channels.

- `start_escalation` opens a run for an incident (called in the transaction that escalates it).
- `Escalator.sweep(now)` does everything due at `now`: releases holds whose silence or parent
  ended, plans each live run with `plan_escalation` and claims its due steps
  (INSERT … ON CONFLICT DO NOTHING: a doubled or redelivered sweep sends nothing twice),
  delivers claimed steps channel by channel (each attempt claimed and recorded in
  `deliveries` and on the incident's timeline; failures retried with backoff, then the next
  level), applies each channel's per-minute limit through Redis counters shared by all
  workers and sends one digest per channel and minute for what the limit held back.
- `on_resolved` (the resolver's close) stops the run, queues resolve notices (PagerDuty
  resolve) for every channel that was notified, and re-checks the incident's children.
- `hold_before_assess` (the commander) keeps silenced incidents out of the pipeline and links
  children to an open parent.

Nothing here waits in memory: every due time is a Postgres row, so a restarted worker or
beat loses no step. Time is always the `now` passed in (tests inject it).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import redis as redis_lib
import structlog
from psycopg.types.json import Jsonb

from . import inhibition, names, silences, store
from .catalog import Catalog
from .db import Database
from .errors import ConfigError, TransientError
from .escalation_policy import (
    RATE_WINDOW,
    ChannelRateLimiter,
    Digest,
    EscalationConfig,
    PlanState,
    RateDecision,
    RetryDecision,
    SentStep,
    delivery_retry,
    parse_duration,
    plan_escalation,
    rate_decision,
    rate_window,
    step_key,
)
from .inhibition import InhibitRule
from .model import Incident, Status
from .notify import AttemptedFix, Channel, DeliveryResult, Notification, NotificationKind, build_channels

log = structlog.get_logger("erdu.escalation")

ACTOR = "escalation"
OWN_KEYS = frozenset({"inhibit", "sweep_interval", "stuck_after", "sweep_batch", "approval_deadline_seconds"})
"""Keys of the `escalation` section read here (or by the reconciler), not by EscalationConfig."""

_PIPELINE_STATUSES = ("detected", "assigned", "investigating", "fixing")
_MAX_ROUNDS = 5
_DIGEST_LOOKBACK = timedelta(days=1)


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


def split_section(section: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what EscalationConfig validates, what this module and the reconciler read)."""
    section = dict(section or {})
    own = {k: section.pop(k) for k in list(section) if k in OWN_KEYS}
    return section, own


def sweep_options(section: Mapping[str, Any] | None) -> SweepOptions:
    """The sweeper's options from the escalation section."""
    _, own = split_section(section)
    try:
        interval = parse_duration(own.get("sweep_interval", 5)).total_seconds()
        raw_stuck = own.get("stuck_after", "15m")
        stuck = None if raw_stuck in (None, False, "off", "never") else parse_duration(raw_stuck)
        batch = int(own.get("sweep_batch", 200))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid escalation sweeper settings: {exc}") from None
    if batch < 1:
        raise ConfigError("escalation.sweep_batch must be at least 1")
    return SweepOptions(interval, stuck, batch)


def escalation_config(section: Mapping[str, Any] | None, alerts_dir: Any) -> EscalationConfig:
    """The validated policies and channels of the escalation section."""
    policy_part, _ = split_section(section)
    return EscalationConfig.from_settings_section(policy_part, alerts_dir)


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
    """What the fixer tried, with outputs: runbook steps, validation, rollback (StepOutcome dicts)."""
    fix = incident.fix or {}
    runbook = fix.get("runbook")
    prefix = f"{runbook}: " if runbook else ""
    out: list[AttemptedFix] = []
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


def start_escalation(conn: psycopg.Connection, incident_id: str, *, reason: str, stage: str | None = None,
                     now: datetime | None = None, worker: str | None = None) -> datetime:
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


def start_in_tx(conn: psycopg.Connection, incident: Incident, *, reason: str, stage: str | None) -> None:
    """The hook of the pipeline's escalation: open a run in the same transaction."""
    start_escalation(conn, incident.id, reason=reason, stage=stage)


def _stop_run(conn: psycopg.Connection, run: Mapping[str, Any], why: str, state: str, now: datetime,
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


def _hold(conn: psycopg.Connection, incident: Incident, *, kind: str, stage: str, now: datetime,
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


def hold_before_assess(conn: psycopg.Connection, incident: Incident, *, rules: Sequence[InhibitRule],
                       catalog: Catalog, worker: str | None, now: datetime | None = None) -> bool:
    """The commander's gate: True when a silence holds the incident (park it; the sweeper resumes it).

    Also links the incident to an open parent (inhibition) without holding its pipeline.
    """
    now = now or utcnow()
    silence = silences.silencing(silences.active_silences(conn, now), incident, now)
    if silence is not None:
        _hold(conn, incident, kind="silence", stage="assess", now=now, worker=worker, silence=silence)
        return True
    if rules and incident.parent_id is None:
        found = inhibition.find_parent(incident, inhibition.candidates(conn, rules), rules, catalog.dependants)
        if found is not None:
            inhibition.link(conn, incident, found[0], found[1], worker=worker)
    return False


def assess_gate(conn: psycopg.Connection, rt: Any, incident: Incident, worker: str | None) -> bool:
    """`hold_before_assess` with the runtime's catalog and inhibit rules (a bad rule only skips linking)."""
    try:
        rules = inhibition.rules_from_section(rt.settings.escalation)
    except ConfigError as exc:
        log.error("inhibition rules ignored", error=str(exc))
        rules = ()
    return hold_before_assess(conn, incident, rules=rules, catalog=rt.catalog, worker=worker)


def _release(conn: psycopg.Connection, hold: Mapping[str, Any], incident: Incident | None, why: str,
             now: datetime, worker: str | None) -> tuple[str, str] | None:
    """End a hold; returns (incident id, stage) when a pipeline stage must be re-driven."""
    done = conn.execute("UPDATE incident_holds SET released_at = %s, release_reason = %s"
                        " WHERE id = %s AND released_at IS NULL RETURNING id", (now, why, hold["id"])).fetchone()
    if done is None or incident is None or not incident.is_open:
        return None
    stage = hold["stage"]
    if stage == "escalate":
        if incident.status is Status.ESCALATED:
            last = conn.execute("SELECT reason, stage FROM escalation_runs WHERE incident_id = %s"
                                " ORDER BY started_at DESC LIMIT 1", (incident.id,)).fetchone()
            reason = f"{last['reason']} ({why})" if last else why
            start_escalation(conn, incident.id, reason=reason, stage=last["stage"] if last else None, now=now)
            store.add_timeline(conn, incident.id, actor=ACTOR, worker=worker, what=f"{why}: escalation resumes")
        else:
            store.add_timeline(conn, incident.id, actor=ACTOR, worker=worker,
                               what=f"{why}; incident is {incident.status.value}, nothing to resume")
        return None
    store.add_timeline(conn, incident.id, actor=ACTOR, worker=worker, what=f"{why}: resuming {stage}")
    return incident.id, stage


def on_resolved(conn: psycopg.Connection, incident: Incident, *, worker: str | None,
                now: datetime | None = None) -> None:
    """The resolver's close: stop the escalation, queue resolve notices, re-check children."""
    now = now or utcnow()
    run = conn.execute(
        "UPDATE escalation_runs SET stopped_at = %s, stop_reason = 'resolved', state = 'resolved', next_at = NULL"
        " WHERE incident_id = %s AND stopped_at IS NULL RETURNING started_at, level",
        (now, incident.id),
    ).fetchone()
    if run is not None:
        store.add_timeline(conn, incident.id, actor=ACTOR, worker=worker,
                           what=f"escalation stopped at level {run['level']}: resolved")
    conn.execute("UPDATE incident_holds SET released_at = %s, release_reason = 'resolved'"
                 " WHERE incident_id = %s AND released_at IS NULL", (now, incident.id))
    notified = [r["channel"] for r in conn.execute(
        "SELECT DISTINCT d.channel FROM deliveries d JOIN escalation_steps s ON s.id = d.step_id"
        " WHERE s.incident_id = %s AND s.kind = 'trigger' AND d.ok ORDER BY d.channel", (incident.id,))]
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
            store.add_timeline(conn, incident.id, actor=ACTOR, worker=worker,
                               what=f"resolve notice queued for {', '.join(notified)}")
    for child in inhibition.children_of(conn, incident.id):
        _recheck_child(conn, incident, child, now, worker)


def _recheck_child(conn: psycopg.Connection, parent: Incident, child: Mapping[str, Any], now: datetime,
                   worker: str | None) -> None:
    label = f"child {child['id']} ({child['severity']} {child['service'] or '-'}, {child['status']})"
    if child["status"] in ("resolved", "closed"):
        store.add_timeline(conn, parent.id, actor=ACTOR, worker=worker, what=f"{label}: already {child['status']}")
        return
    hold = conn.execute("SELECT * FROM incident_holds WHERE incident_id = %s AND released_at IS NULL"
                        " AND kind = 'inhibit' AND parent_id = %s FOR UPDATE", (child["id"], parent.id)).fetchone()
    if hold is not None:
        current = store.get_incident(conn, child["id"])
        _release(conn, hold, current, f"parent {parent.id} resolved", now, worker)
        outcome = "escalating on its own" if current and current.status is Status.ESCALATED else "released"
    else:
        outcome = "still open, continues on its own path"
    store.add_timeline(conn, parent.id, actor=ACTOR, worker=worker, what=f"{label} re-checked: {outcome}")


# --------------------------------------------------------------------------- the sweeper


@dataclass
class SweepReport:
    """What one sweep did (counts for logs and tests, and the stages to re-drive)."""

    runs_started: int = 0
    runs_planned: int = 0
    runs_stopped: int = 0
    steps_claimed: int = 0
    attempts: int = 0
    sent: int = 0
    failed: int = 0
    held: int = 0
    digests: int = 0
    holds_released: int = 0
    resume: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Counts only (a task result)."""
        return {k: v for k, v in self.__dict__.items() if k != "resume"} | {"resumed": len(self.resume)}


@dataclass
class _Context:
    silences: list[silences.Silence]
    candidates: list[Incident]


class RateLimiter:
    """Per-channel notifications per minute, counted in Redis so every worker shares the count."""

    def __init__(self, limits: Mapping[str, int], client: redis_lib.Redis | None,
                 prefix: str = names.NOTIFY_RATE_PREFIX) -> None:
        self.limits = dict(limits)
        self.client = client
        self.prefix = prefix
        self._local = ChannelRateLimiter(limits)

    def admit(self, channel: str, now: datetime, incident_id: str | None) -> tuple[RateDecision, int]:
        """Count one notification; SEND within the limit, HOLD beyond it (with the count)."""
        limit = self.limits.get(channel, 20)
        if self.client is None:
            return self._local.admit(channel, now, incident_id), 0
        window = rate_window(now)
        key = f"{self.prefix}{channel}:{int(window.timestamp())}"
        try:
            pipe = self.client.pipeline()
            pipe.incr(key)
            pipe.expire(key, int(RATE_WINDOW.total_seconds() * 3))
            count = int(pipe.execute()[0])
        except redis_lib.RedisError as exc:
            raise TransientError(f"rate limit counter unavailable: {exc}") from exc
        return rate_decision(count, limit), count


class Escalator:
    """Everything the sweeper needs, built once per process: config, channels, database, Redis, catalog."""

    def __init__(
        self,
        *,
        db: Database,
        config: EscalationConfig,
        catalog: Catalog | None = None,
        redis: redis_lib.Redis | None = None,
        channels: Mapping[str, Channel] | None = None,
        rules: Sequence[InhibitRule] = inhibition.DEFAULT_RULES,
        options: SweepOptions | None = None,
        worker: str | None = None,
        rate_prefix: str = names.NOTIFY_RATE_PREFIX,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.db = db
        self.config = config
        self.catalog = catalog or Catalog([])
        self.channels = dict(channels) if channels is not None else build_channels(config)
        self.rules = tuple(rules)
        self.options = options or SweepOptions()
        self.worker = worker
        self.jitter = jitter
        self.rates = RateLimiter(config.rate_limits(), redis, rate_prefix)
        self.policy_names = {name: s.escalation_policy for name, s in self.catalog.services.items()}
        config.check_policy_names(self.policy_names)

    @classmethod
    def from_settings(cls, settings: Any, db: Database, catalog: Catalog, *, worker: str | None = None,
                      redis: redis_lib.Redis | None = None) -> Escalator:
        """Build from the settings' escalation section (ConfigError when it is wrong)."""
        client = redis if redis is not None else redis_lib.Redis.from_url(
            settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        return cls(db=db, config=escalation_config(settings.escalation, settings.alerts_dir), catalog=catalog,
                   redis=client, rules=inhibition.rules_from_section(settings.escalation),
                   options=sweep_options(settings.escalation), worker=worker)

    # ---- the sweep ------------------------------------------------------------------------

    def sweep(self, now: datetime | None = None) -> SweepReport:
        """Do everything due at now; safe to run twice at once (claims decide who sends)."""
        now = now or utcnow()
        report = SweepReport()
        with self.db.transaction() as conn:
            ctx = _Context(silences.active_silences(conn, now),
                           inhibition.candidates(conn, self.rules) if self.rules else [])
        self._release_holds(now, ctx, report)
        self._start_missing_runs(now, report)
        for _ in range(_MAX_ROUNDS):
            planned = self._plan_due_runs(now, ctx, report)
            worked = self._work_due_steps(now, report)
            if not planned and not worked:
                break
        if self._queue_digests(now, report):
            self._work_due_steps(now, report)
        return report

    def _start_missing_runs(self, now: datetime, report: SweepReport) -> None:
        """An escalated incident without a live run or hold (escalated by a path without the hook) gets one."""
        with self.db.transaction() as conn:
            rows = conn.execute(
                """
                SELECT i.id, (SELECT e.reason FROM escalations e WHERE e.incident_id = i.id
                              ORDER BY e.id DESC LIMIT 1) AS reason
                FROM incidents i
                WHERE i.status = 'escalated'
                  AND NOT EXISTS (SELECT 1 FROM escalation_runs r WHERE r.incident_id = i.id AND r.stopped_at IS NULL)
                  AND NOT EXISTS (SELECT 1 FROM incident_holds h WHERE h.incident_id = i.id AND h.released_at IS NULL)
                ORDER BY i.status_changed_at LIMIT %s FOR UPDATE OF i SKIP LOCKED
                """,
                (self.options.batch,),
            ).fetchall()
            for row in rows:
                start_escalation(conn, row["id"], reason=row["reason"] or "escalated", now=now)
                report.runs_started += 1

    # ---- planning -------------------------------------------------------------------------

    def _plan_due_runs(self, now: datetime, ctx: _Context, report: SweepReport) -> int:
        total = 0
        while True:
            with self.db.transaction() as conn:
                runs = conn.execute(
                    "SELECT * FROM escalation_runs WHERE stopped_at IS NULL AND next_at <= %s"
                    " ORDER BY next_at LIMIT %s FOR UPDATE SKIP LOCKED",
                    (now, self.options.batch),
                ).fetchall()
                for run in runs:
                    self._plan_run(conn, run, now, ctx, report)
            total += len(runs)
            if len(runs) < self.options.batch:
                return total

    def _plan_run(self, conn: psycopg.Connection, run: Mapping[str, Any], now: datetime, ctx: _Context,
                  report: SweepReport) -> None:
        report.runs_planned += 1
        incident = store.get_incident(conn, run["incident_id"])
        if incident is None or incident.status is not Status.ESCALATED:
            status = incident.status if incident else None
            why = {Status.ACKNOWLEDGED: "acknowledged", Status.RESOLVED: "resolved",
                   Status.CLOSED: "resolved", None: "incident gone"}.get(
                status, f"incident is {status.value if status else '?'} again (back in automation)")
            report.runs_stopped += _stop_run(conn, run, why, "acknowledged" if status is Status.ACKNOWLEDGED
                                             else "stopped", now, self.worker)
            return
        silence = silences.silencing(ctx.silences, incident, now)
        if silence is not None:
            report.runs_stopped += _stop_run(conn, run, f"silenced by {silence.id}", "silenced", now, self.worker)
            _hold(conn, incident, kind="silence", stage="escalate", now=now, worker=self.worker, silence=silence)
            return
        parent = self._parent(conn, incident, ctx)
        if parent is not None:
            report.runs_stopped += _stop_run(conn, run, f"inhibited by parent {parent.id}", "inhibited", now,
                                             self.worker)
            _hold(conn, incident, kind="inhibit", stage="escalate", now=now, worker=self.worker, parent=parent)
            return
        sent = [SentStep(r["level"], r["repeat"], r["sent_at"], r["failed_at"]) for r in conn.execute(
            "SELECT level, repeat, sent_at, failed_at FROM escalation_steps"
            " WHERE incident_id = %s AND started_at = %s AND kind = 'trigger'",
            (run["incident_id"], run["started_at"]))]
        plan = plan_escalation(self.config, severity=incident.severity, service=incident.service,
                               started_at=run["started_at"], now=now, sent=sent,
                               policy_name=self.policy_names.get(incident.service or ""))
        for step in plan.due:
            claimed = conn.execute(
                "INSERT INTO escalation_steps (step_key, kind, incident_id, started_at, level, repeat, channels,"
                " payload, due_at, sent_at, next_at) VALUES (%s, 'trigger', %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING RETURNING id",
                (step_key(incident.id, run["started_at"], step.level, step.repeat), incident.id,
                 run["started_at"], step.level, step.repeat, Jsonb(list(step.channels)),
                 Jsonb({"reason": run["reason"]}), step.due_at, now, now),
            ).fetchone()
            if claimed is not None:
                report.steps_claimed += 1
                again = f" (reminder {step.repeat})" if step.repeat else ""
                store.add_timeline(conn, incident.id, actor=ACTOR, worker=self.worker,
                                   what=f"escalation level {step.level}{again}: notifying {', '.join(step.channels)}",
                                   details={"level": step.level, "repeat": step.repeat,
                                            "channels": list(step.channels), "due_at": step.due_at.isoformat()})
        if plan.state is PlanState.QUIET and run["state"] != "quiet":
            store.add_timeline(conn, incident.id, actor=ACTOR, worker=self.worker,
                               what=f"quiet hours: {incident.severity.value} notifications wait until "
                                    f"{plan.next_at.isoformat() if plan.next_at else '?'}")
        conn.execute(
            "UPDATE escalation_runs SET state = %s, level = greatest(level, %s), next_at = %s"
            " WHERE incident_id = %s AND started_at = %s",
            (plan.state.value, plan.level, plan.next_at, run["incident_id"], run["started_at"]),
        )

    def _parent(self, conn: psycopg.Connection, incident: Incident, ctx: _Context) -> Incident | None:
        parent = inhibition.open_parent(conn, incident)
        if parent is not None or not self.rules:
            return parent
        found = inhibition.find_parent(incident, ctx.candidates, self.rules, self.catalog.dependants)
        if found is None:
            return None
        fresh = store.get_incident(conn, found[0].id)
        if fresh is None or not fresh.is_open:
            return None
        inhibition.link(conn, incident, fresh, found[1], worker=self.worker)
        return fresh

    # ---- holds ----------------------------------------------------------------------------

    def _release_holds(self, now: datetime, ctx: _Context, report: SweepReport) -> None:
        with self.db.transaction() as conn:
            holds = conn.execute(
                """
                SELECT h.* FROM incident_holds h
                JOIN incidents i ON i.id = h.incident_id
                LEFT JOIN silences s ON s.id = h.silence_id
                LEFT JOIN incidents p ON p.id = h.parent_id
                WHERE h.released_at IS NULL AND (
                      i.status IN ('resolved', 'closed')
                   OR (h.kind = 'silence' AND (s.ends_at <= %(now)s OR s.expired_at <= %(now)s))
                   OR (h.kind = 'inhibit' AND (p.id IS NULL OR p.status IN ('resolved', 'closed'))))
                ORDER BY h.id LIMIT %(limit)s FOR UPDATE OF h SKIP LOCKED
                """,
                {"now": now, "limit": self.options.batch},
            ).fetchall()
            for hold in holds:
                incident = store.get_incident(conn, hold["incident_id"])
                if incident is not None and incident.is_open and hold["kind"] == "silence":
                    other = silences.silencing(ctx.silences, incident, now)
                    if other is not None:
                        _hold(conn, incident, kind="silence", stage=hold["stage"], now=now, worker=self.worker,
                              silence=other)
                        continue
                    why = f"silence {hold['silence_id']} ended"
                elif incident is not None and incident.is_open:
                    why = f"parent {hold['parent_id']} resolved"
                else:
                    why = "incident closed"
                resume = _release(conn, hold, incident, why, now, self.worker)
                report.holds_released += 1
                if resume is not None:
                    report.resume.append(resume)

    # ---- delivery -------------------------------------------------------------------------

    def _work_due_steps(self, now: datetime, report: SweepReport) -> int:
        total = 0
        while True:
            with self.db.transaction() as conn:
                steps = conn.execute(
                    "SELECT * FROM escalation_steps WHERE done_at IS NULL AND next_at <= %s"
                    " ORDER BY next_at, id LIMIT %s",
                    (now, self.options.batch),
                ).fetchall()
            for step in steps:
                self._work_step(step, now, report)
            total += len(steps)
            if len(steps) < self.options.batch:
                return total

    def _work_step(self, step: Mapping[str, Any], now: datetime, report: SweepReport) -> None:
        kind = NotificationKind(step["kind"])
        incident = None
        if step["incident_id"]:
            with self.db.transaction() as conn:
                incident = store.get_incident(conn, step["incident_id"])
        cancel = None
        if incident is None and kind is not NotificationKind.DIGEST:
            cancel = "incident gone"
        elif kind is NotificationKind.TRIGGER and incident.status is not Status.ESCALATED:
            cancel = f"incident is {incident.status.value}"
        if cancel is not None:
            self._settle(step, now, cancelled=cancel)
            return
        notification = self._notification(step, incident, kind, now)
        for channel in step["channels"]:
            self._work_channel(step, channel, notification, incident, now, report)
        self._settle(step, now)

    def _notification(self, step: Mapping[str, Any], incident: Incident | None, kind: NotificationKind,
                      now: datetime) -> Notification:
        payload = step["payload"] or {}
        if kind is NotificationKind.DIGEST:
            start = datetime.fromisoformat(payload["window_start"])
            digest = Digest(payload["channel"], start, start + RATE_WINDOW, int(payload["held"]),
                            tuple(payload.get("sample", ())))
            return digest.notification()
        assert incident is not None
        level = int(payload.get("level", step["level"])) if kind is NotificationKind.RESOLVE else step["level"]
        reason = payload.get("reason") or "escalated"
        if kind is NotificationKind.TRIGGER and step["level"] > 1:
            reason = f"{reason} (not acknowledged at level {step['level'] - 1})"
        if kind is NotificationKind.RESOLVE:
            reason = f"resolved ({incident.resolved_by or 'resolved'})"
        return build_notification(self.config, incident, reason=reason, level=level, repeat=step["repeat"],
                                   kind=NotificationKind.TRIGGER if kind is NotificationKind.RESOLVE else kind,
                                   now=now)

    def _lease(self, channel: str) -> timedelta:
        ch = self.channels.get(channel)
        timeout = float(getattr(getattr(ch, "settings", None), "timeout", 5.0))
        return timedelta(seconds=2 * timeout + 30)

    def _work_channel(self, step: Mapping[str, Any], channel: str, notification: Notification,
                      incident: Incident | None, now: datetime, report: SweepReport) -> None:
        with self.db.transaction() as conn:
            last = conn.execute("SELECT * FROM deliveries WHERE step_id = %s AND channel = %s"
                                " ORDER BY attempt DESC LIMIT 1", (step["id"], channel)).fetchone()
            if last is not None:
                if last["ok"] or last["held"] or last["gave_up"]:
                    return
                if last["ok"] is None:
                    if last["claimed_at"] + self._lease(channel) > now:
                        return   # another sweeper is delivering it right now
                    lost = DeliveryResult.failed(channel, "the worker was lost during this delivery; outcome "
                                                 "unknown", permanent=False)
                    self._record(conn, step, last["id"], last["attempt"], lost, incident, now, report, lost=True)
                    return
                if last["retry_at"] is None or last["retry_at"] > now:
                    return
            attempt = 1 if last is None else int(last["attempt"]) + 1
            claimed = conn.execute(
                "INSERT INTO deliveries (step_id, incident_id, channel, attempt, claimed_at)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING id",
                (step["id"], step["incident_id"], channel, attempt, now),
            ).fetchone()
        if claimed is None:
            return
        delivery_id = claimed["id"]
        report.attempts += 1
        target = self.channels.get(channel)
        kind = NotificationKind(step["kind"])
        if target is None:
            result = DeliveryResult.failed(channel, f"channel {channel!r} is no longer configured", permanent=True)
        else:
            if attempt == 1 and kind is not NotificationKind.DIGEST:
                decision, count = self.rates.admit(channel, now, step["incident_id"])
                if decision is RateDecision.HOLD:
                    with self.db.transaction() as conn:
                        self._record_held(conn, step, delivery_id, channel, count, incident, now)
                    report.held += 1
                    return
            result = target.resolve(notification) if kind is NotificationKind.RESOLVE else target.send(notification)
        with self.db.transaction() as conn:
            self._record(conn, step, delivery_id, attempt, result, incident, now, report)

    def _record_held(self, conn: psycopg.Connection, step: Mapping[str, Any], delivery_id: int, channel: str,
                     count: int, incident: Incident | None, now: datetime) -> None:
        limit = self.rates.limits.get(channel, 20)
        detail = f"held by the rate limit ({limit}/minute; {count} this minute): counted in the next digest"
        conn.execute("UPDATE deliveries SET at = %s, ok = false, held = true, detail = %s WHERE id = %s",
                     (now, detail, delivery_id))
        if incident is not None:
            store.add_timeline(conn, incident.id, actor=ACTOR, worker=self.worker,
                               what=f"notification to {channel} {detail}",
                               details={"channel": channel, "step": step["step_key"], "held": True})

    def _record(self, conn: psycopg.Connection, step: Mapping[str, Any], delivery_id: int, attempt: int,
                result: DeliveryResult, incident: Incident | None, now: datetime, report: SweepReport, *,
                lost: bool = False) -> None:
        retry = delivery_retry(result, attempt, self.config.retry, jitter=self.jitter)
        retry_at = now + timedelta(seconds=retry.delay) if retry.decision is RetryDecision.RETRY else None
        gave_up = retry.decision is RetryDecision.GIVE_UP
        updated = conn.execute(
            "UPDATE deliveries SET at = %s, ok = %s, detail = %s, permanent = %s, response_code = %s,"
            " retry_at = %s, gave_up = %s WHERE id = %s AND ok IS NULL RETURNING id",
            (now, result.ok, result.detail[:2000], result.permanent, result.response_code, retry_at, gave_up,
             delivery_id),
        ).fetchone()
        if updated is None:
            return
        if result.ok:
            report.sent += 1
        else:
            report.failed += 1
        if incident is None:
            return
        channel = result.channel
        what_kind = "resolve notice" if step["kind"] == "resolve" else f"level {step['level']} notification"
        if result.ok:
            what = f"{what_kind} sent to {channel}: {result.detail[:200]}"
        else:
            tries = f"attempt {attempt}/{self.config.retry.max_attempts}"
            then = (f"retry in {retry.delay:.1f} s" if retry_at is not None
                    else "giving up" + (" (permanent error)" if result.permanent else ""))
            what = f"{what_kind} to {channel} failed ({tries}): {result.detail[:200]}; {then}"
        store.add_timeline(conn, incident.id, actor=ACTOR, worker=self.worker, what=what,
                           details={**result.to_dict(), "attempt": attempt, "step": step["step_key"],
                                    "retry_at": retry_at.isoformat() if retry_at else None, "lost": lost})

    def _settle(self, step: Mapping[str, Any], now: datetime, *, cancelled: str | None = None) -> None:
        """Mark the step done when every channel settled; otherwise set when to look again."""
        with self.db.transaction() as conn:
            if cancelled is not None:
                conn.execute("UPDATE escalation_steps SET done_at = %s, next_at = NULL, payload = payload || %s"
                             " WHERE id = %s AND done_at IS NULL",
                             (now, Jsonb({"cancelled": cancelled}), step["id"]))
                return
            rows = conn.execute(
                "SELECT DISTINCT ON (channel) * FROM deliveries WHERE step_id = %s ORDER BY channel, attempt DESC",
                (step["id"],),
            ).fetchall()
            latest = {r["channel"]: r for r in rows}
            pending: list[datetime] = []
            delivered = False
            for channel in step["channels"]:
                row = latest.get(channel)
                if row is None:
                    pending.append(now)
                elif row["ok"] or row["held"]:
                    delivered = True
                elif row["gave_up"]:
                    continue
                elif row["ok"] is None:
                    pending.append(row["claimed_at"] + self._lease(channel))
                else:
                    pending.append(row["retry_at"] or now)
            if pending:
                conn.execute("UPDATE escalation_steps SET next_at = %s WHERE id = %s AND done_at IS NULL",
                             (max(min(pending), now + timedelta(milliseconds=1)), step["id"]))
                return
            failed = not delivered
            done = conn.execute(
                "UPDATE escalation_steps SET done_at = %s, failed_at = %s, next_at = NULL"
                " WHERE id = %s AND done_at IS NULL RETURNING id",
                (now, now if failed else None, step["id"]),
            ).fetchone()
            if done is None or not failed or step["kind"] != "trigger":
                return
            store.add_timeline(conn, step["incident_id"], actor=ACTOR, worker=self.worker,
                               what=f"every delivery of level {step['level']} failed: moving on to the next level")
            conn.execute("UPDATE escalation_runs SET next_at = %s WHERE incident_id = %s AND started_at = %s"
                         " AND stopped_at IS NULL", (now, step["incident_id"], step["started_at"]))

    # ---- digests --------------------------------------------------------------------------

    def _queue_digests(self, now: datetime, report: SweepReport) -> int:
        """One digest per channel and finished minute in which the rate limit held something back."""
        current = rate_window(now)
        window_seconds = int(RATE_WINDOW.total_seconds())
        with self.db.transaction() as conn:
            rows = conn.execute(
                """
                SELECT channel, window_epoch, count(*) AS held,
                       (array_agg(incident_id ORDER BY at, id))[1:10] AS sample
                FROM (SELECT d.*, (floor(extract(epoch FROM d.at) / %(w)s) * %(w)s)::bigint AS window_epoch
                      FROM deliveries d
                      WHERE d.held AND d.at < %(current)s AND d.at >= %(since)s) held
                WHERE NOT EXISTS (SELECT 1 FROM escalation_steps s
                                  WHERE s.step_key = 'DIGEST:' || held.channel || ':' || held.window_epoch)
                GROUP BY channel, window_epoch ORDER BY window_epoch, channel
                """,
                {"w": window_seconds, "current": current, "since": current - _DIGEST_LOOKBACK},
            ).fetchall()
            queued = 0
            for row in rows:
                start = datetime.fromtimestamp(int(row["window_epoch"]), timezone.utc)
                payload = {"channel": row["channel"], "window_start": start.isoformat(), "held": int(row["held"]),
                           "sample": [i for i in row["sample"] if i]}
                claimed = conn.execute(
                    "INSERT INTO escalation_steps (step_key, kind, channels, payload, due_at, sent_at, next_at)"
                    " VALUES (%s, 'digest', %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING id",
                    (f"DIGEST:{row['channel']}:{row['window_epoch']}", Jsonb([row["channel"]]), Jsonb(payload),
                     start + RATE_WINDOW, now, now),
                ).fetchone()
                queued += claimed is not None
        report.digests += queued
        return queued


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


def deliveries_of(conn: psycopg.Connection, incident_id: str) -> list[dict[str, Any]]:
    """Every delivery attempt for an incident, oldest first."""
    return conn.execute(
        "SELECT s.kind, s.level, s.repeat, d.channel, d.attempt, d.claimed_at, d.at, d.ok, d.held, d.gave_up,"
        " d.detail, d.permanent, d.response_code, d.retry_at FROM deliveries d"
        " JOIN escalation_steps s ON s.id = d.step_id WHERE d.incident_id = %s ORDER BY d.id",
        (incident_id,),
    ).fetchall()


def run_states(conn: psycopg.Connection, incident_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The latest run of each incident: state, level, next_at."""
    rows = conn.execute(
        "SELECT DISTINCT ON (incident_id) * FROM escalation_runs WHERE incident_id = ANY(%s)"
        " ORDER BY incident_id, started_at DESC", (list(incident_ids),),
    ).fetchall()
    return {r["incident_id"]: r for r in rows}
