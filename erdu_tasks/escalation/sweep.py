"""The escalation sweeper: everything due at `now`, run by beat on the monitor queue.

One sweep releases holds whose silence or parent ended, reports escalated incidents that have
no run (an auditor: `escalation.start.escalate` always opens one, so a gap is a bug to look at,
not something to fill quietly), asks the gate list (silence, inhibition) before it plans each
due run with `plan_escalation` and claims its due steps, delivers claimed steps channel by
channel behind the rate-limit gate, and queues one digest per channel and minute for what the
rate limit held back. Every claim is an INSERT … ON CONFLICT DO NOTHING on a unique key
(a step, a delivery attempt, a digest), so two sweepers at once, or a redelivered one, send
nothing twice; a sweeper that dies leaves rows that the next one finishes.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import psycopg
import redis as redis_lib
from psycopg.types.json import Jsonb

from erdu_tasks.escalation import inhibition, silences
from erdu_tasks import names
from erdu_tasks.redisconn import redis_client
from erdu_tasks.store import incidents as store
from erdu_tasks.catalog import Catalog
from erdu_tasks.store.db import Database
from erdu_tasks.escalation.runs import (
    ACTOR,
    log,
    SweepOptions,
    build_notification,
    escalation_config,
    hold,
    release_hold,
    stop_run,
    sweep_options,
    utcnow,
)
from erdu_tasks.escalation.gates import Facts, GateName, Gates, Outcome, build_gates
from erdu_tasks.escalation.policy import (
    RATE_WINDOW,
    Digest,
    EscalationConfig,
    PlanState,
    RetryDecision,
    SentStep,
    delivery_retry,
    plan_escalation,
    rate_window,
    step_key,
)
from erdu_tasks.escalation.inhibition import InhibitRule
from erdu_tasks.escalation.contacts import LevelPages, Page, Pager, parse_delivery
from erdu_tasks.escalation.schedules import Rota
from erdu_tasks.model import Incident, Status
from erdu_tasks.escalation.channels import Channel, DeliveryResult, Notification, NotificationKind, build_channels
from erdu_tasks.settings.schedules import OncallConfig

if TYPE_CHECKING:
    import httpx   # imported where a request is made: most processes never make one

_MAX_ROUNDS = 5


_DIGEST_LOOKBACK = timedelta(days=1)
MISSING_RUN = "audit: escalated without an escalation run"
PLAN_GATES = (GateName.SILENCE, GateName.INHIBITION)
_STEP_KINDS = {"trigger": NotificationKind.TRIGGER, "resolve": NotificationKind.RESOLVE,
               "digest": NotificationKind.DIGEST, "reminder": NotificationKind.REMINDER,
               "page": NotificationKind.TRIGGER, "fyi": NotificationKind.FYI}
"""A step's kind -> the notification it sends (`page`: a person paged by hand, e.g. on reassignment;
`fyi`: a P1 closed without a repair)."""


class PageRefused(Exception):
    """A page by hand that cannot be sent (unknown person, nobody reachable, incident not open)."""


def _label(channel: str) -> str:
    person = parse_delivery(channel)
    return f"{person[0]} via {person[1]}" if person else channel


@dataclass
class SweepReport:
    """What one sweep did (counts for logs and tests, and the stages to re-drive)."""

    runs_missing: int = 0
    runs_planned: int = 0
    runs_stopped: int = 0
    steps_claimed: int = 0
    attempts: int = 0
    sent: int = 0
    failed: int = 0
    held: int = 0
    digests: int = 0
    holds_released: int = 0
    reminders: int = 0
    resume: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Counts only (a task result)."""
        return {k: v for k, v in self.__dict__.items() if k != "resume"} | {"resumed": len(self.resume)}


@dataclass
class _Context:
    silences: list[silences.Silence]
    candidates: list[Incident]


class NotificationCounter:
    """Per-channel notifications per minute, counted in Redis so every worker shares the count."""

    def __init__(self, client: redis_lib.Redis | None, prefix: str = names.NOTIFY_RATE_PREFIX) -> None:
        self.client = client
        self.prefix = prefix
        self._local: dict[tuple[str, datetime], int] = {}

    def count(self, channel: str, now: datetime) -> int:
        """Count one notification on the channel; its number in the current window."""
        window = rate_window(now)
        if self.client is not None:
            key = f"{self.prefix}{channel}:{int(window.timestamp())}"
            try:
                pipe = self.client.pipeline()
                pipe.incr(key)
                pipe.expire(key, int(RATE_WINDOW.total_seconds() * 3))
                return int(pipe.execute()[0])
            except redis_lib.RedisError as exc:
                # A page must not wait for the counter: fall back to this process's own count.
                log.warning("rate limit counter unavailable; counting in this process", channel=channel,
                            error=str(exc))
        for old in [k for k in self._local if k[1] < window]:
            del self._local[old]
        self._local[(channel, window)] = count = self._local.get((channel, window), 0) + 1
        return count


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
        gates: Gates | None = None,
        options: SweepOptions | None = None,
        worker: str | None = None,
        rate_prefix: str = names.NOTIFY_RATE_PREFIX,
        jitter: Callable[[], float] = random.random,
        people: Mapping[str, Any] | None = None,
        oncall: OncallConfig | None = None,
    ) -> None:
        self.db = db
        self.config = config
        self.catalog = catalog or Catalog([])
        self._http = None
        if channels is None:
            import httpx   # one client for the channels built here

            self._http = httpx.Client(follow_redirects=False)
        self.channels = dict(channels) if channels is not None else build_channels(config, self._http)
        oncall = oncall or OncallConfig()
        self.pager = Pager(config, oncall, dict(people or {}), Rota(oncall, dict(people or {})), self._http)
        self.gates = gates if gates is not None else build_gates(
            rules=rules, dependants_of=self.catalog.dependants, rate_limits=config.rate_limits(),
            intervals=config.time_intervals)
        self.rules = self.gates.inhibit_rules
        self.options = options or SweepOptions()
        self.worker = worker
        self.jitter = jitter
        self.counter = NotificationCounter(redis, rate_prefix)
        self.policy_names = {name: s.escalation_policy for name, s in self.catalog.services.items()}
        config.check_policy_names(self.policy_names)

    @classmethod
    def from_settings(cls, settings: Any, db: Database, catalog: Catalog, *, gates: Gates,
                      worker: str | None = None, redis: redis_lib.Redis | None = None) -> Escalator:
        """Build from the settings' escalation section and the runtime's gate list (ConfigError when wrong)."""
        client = redis if redis is not None else redis_client(
            settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        return cls(db=db, config=escalation_config(settings.escalation, settings.alerts_dir), catalog=catalog,
                   redis=client, gates=gates, options=sweep_options(settings.escalation), worker=worker,
                   people=settings.people, oncall=settings.oncall)

    def close(self) -> None:
        """Close the shared HTTP connection pool."""
        if self._http is not None:
            self._http.close()

    # ---- the sweep ------------------------------------------------------------------------

    def sweep(self, now: datetime | None = None) -> SweepReport:
        """Do everything due at now; safe to run twice at once (claims decide who sends)."""
        now = now or utcnow()
        report = SweepReport()
        with self.db.transaction() as conn:
            ctx = _Context(silences.active_silences(conn, now),
                           inhibition.candidates(conn, self.rules) if self.rules else [])
        self._release_holds(now, ctx, report)
        self._remind_silences(now, report)
        self._audit_missing_runs(now, report)
        for _ in range(_MAX_ROUNDS):
            planned = self._plan_due_runs(now, ctx, report)
            worked = self._work_due_steps(now, report)
            if not planned and not worked:
                break
        if self._queue_digests(now, report):
            self._work_due_steps(now, report)
        return report

    def _audit_missing_runs(self, now: datetime, report: SweepReport) -> None:
        """Report (once per incident: log and timeline) an escalated incident with neither a live run nor a hold.

        `escalation.start.escalate` opens the run in the transaction that escalates, and a released hold
        reopens it, so no path leaves this gap; finding one means a bug or a hand-edited row, and
        nobody is being notified about that incident.
        """
        with self.db.transaction() as conn:
            rows = conn.execute(
                """
                SELECT i.id, i.status_changed_at FROM incidents i
                WHERE i.status = 'escalated'
                  AND NOT EXISTS (SELECT 1 FROM escalation_runs r WHERE r.incident_id = i.id AND r.stopped_at IS NULL)
                  AND NOT EXISTS (SELECT 1 FROM incident_holds h WHERE h.incident_id = i.id AND h.released_at IS NULL)
                  AND NOT EXISTS (SELECT 1 FROM incident_timeline t WHERE t.incident_id = i.id
                                  AND t.actor = %(actor)s AND t.what LIKE %(what)s AND t.at >= i.status_changed_at)
                ORDER BY i.status_changed_at LIMIT %(limit)s FOR UPDATE OF i SKIP LOCKED
                """,
                {"actor": ACTOR, "what": MISSING_RUN + "%", "limit": self.options.batch},
            ).fetchall()
            for row in rows:
                log.error("escalated incident without an escalation run", incident_id=row["id"],
                          escalated_at=row["status_changed_at"].isoformat())
                store.add_timeline(conn, row["id"], actor=ACTOR, worker=self.worker,
                                   what=f"{MISSING_RUN}: nobody is notified; acknowledge or retry it by hand")
                report.runs_missing += 1

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
            report.runs_stopped += stop_run(conn, run, why, "acknowledged" if status is Status.ACKNOWLEDGED
                                             else "stopped", now, self.worker)
            return
        facts = Facts(incident=incident, silences=ctx.silences, parent=inhibition.open_parent(conn, incident),
                      candidates=ctx.candidates)
        decision = self.gates.check(facts, now, PLAN_GATES)
        if decision.outcome is Outcome.SILENCED:
            silence = decision.silence
            report.runs_stopped += stop_run(conn, run, f"silenced by {silence.id}", "silenced", now, self.worker)
            hold(conn, incident, kind="silence", stage="escalate", now=now, worker=self.worker, silence=silence)
            return
        parent = self._parent(conn, incident, decision)
        if parent is not None:
            report.runs_stopped += stop_run(conn, run, f"inhibited by parent {parent.id}", "inhibited", now,
                                             self.worker)
            hold(conn, incident, kind="inhibit", stage="escalate", now=now, worker=self.worker, parent=parent)
            return
        sent = [SentStep(r["level"], r["repeat"], r["sent_at"], r["failed_at"]) for r in conn.execute(
            "SELECT level, repeat, sent_at, failed_at FROM escalation_steps"
            " WHERE incident_id = %s AND started_at = %s AND kind = 'trigger'",
            (run["incident_id"], run["started_at"]))]
        policy_name = self.policy_names.get(incident.service or "")
        plan = plan_escalation(self.config, severity=incident.severity, service=incident.service,
                               started_at=run["started_at"], now=now, sent=sent, policy_name=policy_name)
        policy = self.config.policy_for(incident.severity, incident.service, policy_name)
        for step in plan.due:
            level = policy.levels[step.level - 1]
            # The person on call at the level's time (its due time), so a late sweep pages the same person.
            pages = self.pager.level_pages(level, step.due_at) if level.schedule or level.person else LevelPages()
            targets = list(step.channels) + [d for d in pages.deliveries if d not in step.channels]
            payload: dict[str, Any] = {"reason": run["reason"]}
            if pages.pages or pages.problems:
                payload |= {"paged": [p.as_dict() for p in pages.pages], "problems": list(pages.problems)}
            claimed = conn.execute(
                "INSERT INTO escalation_steps (step_key, kind, incident_id, started_at, level, repeat, channels,"
                " payload, due_at, sent_at, next_at) VALUES (%s, 'trigger', %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING RETURNING id",
                (step_key(incident.id, run["started_at"], step.level, step.repeat), incident.id,
                 run["started_at"], step.level, step.repeat, Jsonb(targets), Jsonb(payload), step.due_at, now, now),
            ).fetchone()
            if claimed is not None:
                report.steps_claimed += 1
                again = f" (reminder {step.repeat})" if step.repeat else ""
                parts = ([f"notifying {', '.join(step.channels)}"] if step.channels else []) + \
                    ([pages.describe()] if pages.pages else [])
                store.add_timeline(conn, incident.id, actor=ACTOR, worker=self.worker,
                                   what=f"escalation level {step.level}{again}: {'; '.join(parts) or 'nobody to page'}",
                                   details={"level": step.level, "repeat": step.repeat,
                                            "channels": list(step.channels), "due_at": step.due_at.isoformat(),
                                            **({"paged": payload["paged"]} if pages.pages else {})})
                for problem in pages.problems:
                    store.add_timeline(conn, incident.id, actor=ACTOR, worker=self.worker,
                                       what=f"escalation level {step.level}: {problem}",
                                       details={"level": step.level, "problem": problem})
        if plan.state is PlanState.MUTED and run["state"] != "muted":
            store.add_timeline(conn, incident.id, actor=ACTOR, worker=self.worker,
                               what=f"muted during time interval {plan.muted_by}: notifications wait until it "
                                    "ends", details={"time_interval": plan.muted_by})
        if plan.state is PlanState.QUIET and run["state"] != "quiet":
            store.add_timeline(conn, incident.id, actor=ACTOR, worker=self.worker,
                               what=f"quiet hours: {incident.severity.value} notifications wait until "
                                    f"{plan.next_at.isoformat() if plan.next_at else '?'}")
        conn.execute(
            "UPDATE escalation_runs SET state = %s, level = greatest(level, %s), next_at = %s"
            " WHERE incident_id = %s AND started_at = %s",
            (plan.state.value, plan.level, plan.next_at, run["incident_id"], run["started_at"]),
        )

    def _parent(self, conn: psycopg.Connection, incident: Incident, decision: Any) -> Incident | None:
        """The inhibiting parent of an INHIBITED decision; a new one is re-read (still open?) and linked."""
        if decision.outcome is not Outcome.INHIBITED or decision.parent is None:
            return None
        if decision.rule is None:
            return decision.parent
        fresh = store.get_incident(conn, decision.parent.id)
        if fresh is None or not fresh.is_open:
            return None
        inhibition.link(conn, incident, fresh, decision.rule, worker=self.worker)
        return fresh

    # ---- holds ----------------------------------------------------------------------------

    def _release_holds(self, now: datetime, ctx: _Context, report: SweepReport) -> None:
        # Recurring silences inside their window but outside their intervals right now: their holds end.
        idle = [s.id for s in ctx.silences if s.active_during and not s.active(now, self.config.time_intervals)]
        with self.db.transaction() as conn:
            holds = conn.execute(
                """
                SELECT h.* FROM incident_holds h
                JOIN incidents i ON i.id = h.incident_id
                LEFT JOIN silences s ON s.id = h.silence_id
                LEFT JOIN incidents p ON p.id = h.parent_id
                WHERE h.released_at IS NULL AND (
                      i.status IN ('resolved', 'closed')
                   OR (h.kind = 'silence' AND (s.ends_at <= %(now)s OR s.expired_at <= %(now)s
                                               OR h.silence_id = ANY(%(idle)s)))
                   OR (h.kind = 'inhibit' AND (p.id IS NULL OR p.status IN ('resolved', 'closed'))))
                ORDER BY h.id LIMIT %(limit)s FOR UPDATE OF h SKIP LOCKED
                """,
                {"now": now, "limit": self.options.batch, "idle": idle},
            ).fetchall()
            for row in holds:
                incident = store.get_incident(conn, row["incident_id"])
                if incident is not None and incident.is_open and row["kind"] == "silence":
                    other = self.gates.check(Facts(incident=incident, silences=ctx.silences), now, (GateName.SILENCE,))
                    if other.outcome is Outcome.SILENCED:
                        hold(conn, incident, kind="silence", stage=row["stage"], now=now, worker=self.worker,
                             silence=other.silence)
                        continue
                    live = next((s for s in ctx.silences if s.id == row["silence_id"]), None)
                    why = (f"silence {row['silence_id']} is outside its time intervals "
                           f"({', '.join(live.active_during)})" if live is not None and live.active_during
                           else f"silence {row['silence_id']} ended")
                elif incident is not None and incident.is_open:
                    why = f"parent {row['parent_id']} resolved"
                else:
                    why = "incident closed"
                resume = release_hold(conn, row, incident, why, now, self.worker)
                report.holds_released += 1
                if resume is not None:
                    report.resume.append(resume)

    def _remind_silences(self, now: datetime, report: SweepReport) -> None:
        """Once per silence, `escalation.silences.remind_before` its end: a note on every incident it holds, and (for a
        silence longer than remind_before) a message to its author or the first escalation level."""
        before = self.config.silences.remind_before
        if before is None:
            return
        with self.db.transaction() as conn:
            for silence in silences.due_reminders(conn, now, before, self.options.batch):
                held = silences.held_by(conn, silence.id)
                left = max(0, int((silence.end() - now).total_seconds() // 60))
                log.info("silence ends soon", silence_id=silence.id, ends_at=silence.end().isoformat(),
                         held=len(held))
                # A silence shorter than remind_before would be announced as it begins: only the note then.
                long_enough = silence.end() - silence.starts_at > before
                targets, whom = self._reminder_targets(conn, silence, held, now) if long_enough else ([], "")
                sent_to = f"; reminder sent to {whom}" if targets else ""
                for incident_id in held:
                    store.add_timeline(conn, incident_id, actor=ACTOR, worker=self.worker,
                                       what=f"reminder: silence {silence.id} ({silence.describe()}) ends at "
                                            f"{silence.end().isoformat(timespec='seconds')} (in {left} min); "
                                            f"this incident resumes then unless the silence is extended{sent_to}",
                                       details={"silence_id": silence.id, "ends_at": silence.end().isoformat(),
                                                "author": silence.author, "sent_to": targets})
                if targets:
                    conn.execute(
                        "INSERT INTO escalation_steps (step_key, kind, channels, payload, due_at, sent_at, next_at)"
                        " VALUES (%s, 'reminder', %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                        (f"REMIND:{silence.id}:{int(silence.end().timestamp())}", Jsonb(targets),
                         Jsonb({"silence_id": silence.id, "what": silence.describe(), "author": silence.author,
                                "ends_at": silence.end().isoformat(), "held": held[:50]}), now, now, now))
                report.reminders += 1

    def _reminder_targets(self, conn: psycopg.Connection, silence: silences.Silence, held: list[str],
                          now: datetime) -> tuple[list[str], str]:
        """Where a silence's reminder goes: its author's contacts when the author is a person with some, else
        the first level of the escalation policy of the incidents it holds (the default policy's when none)."""
        author = self.pager.page(silence.author, "silence author") if silence.author in self.pager.people else None
        if author is not None and author.deliveries:
            return list(author.deliveries), f"its author {silence.author}"
        levels = []
        for incident_id in held:
            incident = store.get_incident(conn, incident_id)
            if incident is not None:
                policy = self.config.policy_for(incident.severity, incident.service,
                                                self.policy_names.get(incident.service or ""))
                levels.append(policy.levels[0])
        if not levels:
            levels = [self.config.policy_for("P3").levels[0]]
        targets: dict[str, None] = {}
        for level in levels:
            targets.update(dict.fromkeys(level.channels))
            if level.schedule or level.person:
                targets.update(dict.fromkeys(self.pager.level_pages(level, now).deliveries))
        return list(targets), "the first escalation level: " + ", ".join(_label(t) for t in targets)

    # ---- pages by hand --------------------------------------------------------------------

    def page_now(self, incident_id: str, person: str, *, by: str, reason: str, now: datetime | None = None) -> Page:
        """Page one person about an open incident now (a reassignment): the step is claimed, recorded on the
        timeline and delivered at once; what fails to deliver is retried by the sweeper. PageRefused when the
        person is unknown or cannot be reached, or the incident is not open."""
        now = now or utcnow()
        if person not in self.pager.people:
            known = ", ".join(sorted(self.pager.people)) or "none"
            raise PageRefused(f"no person {person!r} in the people section (defined: {known})")
        page = self.pager.page(person, f"assigned by {by}")
        if not page.deliveries:
            raise PageRefused(f"{person} cannot be paged: {'; '.join(page.skipped)}")
        with self.db.transaction() as conn:
            incident = store.get_incident(conn, incident_id, for_update=True)
            if incident is None:
                raise PageRefused(f"no incident {incident_id}")
            if not incident.is_open:
                raise PageRefused(f"{incident_id} is {incident.status.value}: nobody is paged for it")
            step = conn.execute(
                # No started_at: a page by hand belongs to no run (and two at once do not collide).
                "INSERT INTO escalation_steps (step_key, kind, incident_id, channels, payload, due_at,"
                " sent_at, next_at) VALUES (%s, 'page', %s, %s, %s, %s, %s, %s) RETURNING *",
                (f"{incident_id}:page:{person}:{secrets.token_hex(6)}", incident_id,
                 Jsonb(list(page.deliveries)), Jsonb({"reason": reason, "paged": [page.as_dict()], "assignee": person,
                                                      "by": by}), now, now, now),
            ).fetchone()
            store.add_timeline(conn, incident_id, actor=f"person:{by}", worker=self.worker,
                               what=f"{reason}: paging {person} via "
                                    + ", ".join(d.rsplit("/", 1)[1] for d in page.deliveries),
                               details={"assignee": person, "paged": [page.as_dict()], "by": by})
        self._work_step(step, now, SweepReport())
        return page

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
        kind = _STEP_KINDS[step["kind"]]
        incident = None
        if step["incident_id"]:
            with self.db.transaction() as conn:
                incident = store.get_incident(conn, step["incident_id"])
        cancel = None
        if incident is None and kind not in (NotificationKind.DIGEST, NotificationKind.REMINDER):
            cancel = "incident gone"
        elif step["kind"] == "trigger" and incident.status is not Status.ESCALATED:
            cancel = f"incident is {incident.status.value}"
        elif step["kind"] == "page" and not incident.is_open:
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
        if kind is NotificationKind.REMINDER:
            return Notification.reminder(
                silence_id=payload["silence_id"], what=payload.get("what", ""),
                ends_at=datetime.fromisoformat(payload["ends_at"]), held=payload.get("held", []),
                author=payload.get("author", "?"), see_command=f"erdu silence ls  # {payload['silence_id']}", now=now)
        if kind is NotificationKind.DIGEST:
            start = datetime.fromisoformat(payload["window_start"])
            digest = Digest(payload["channel"], start, start + RATE_WINDOW, int(payload["held"]),
                            tuple(payload.get("sample", ())))
            return digest.notification()
        assert incident is not None
        level = int(payload.get("level", step["level"])) if kind is NotificationKind.RESOLVE else step["level"]
        reason = payload.get("reason") or "escalated"
        if step["kind"] == "trigger" and step["level"] > 1:
            reason = f"{reason} (not acknowledged at level {step['level'] - 1})"
        if kind is NotificationKind.RESOLVE:
            reason = f"resolved ({incident.resolved_by or 'resolved'})"
        if kind is NotificationKind.FYI:
            level = 1
        return build_notification(self.config, incident, reason=reason, level=level, repeat=step["repeat"],
                                   kind=NotificationKind.TRIGGER if kind is NotificationKind.RESOLVE else kind,
                                   now=now)

    def _channel(self, name: str) -> Channel | None:
        """A configured channel, or the channel of a person delivery (`@alice/email`)."""
        return self.channels.get(name) or self.pager.channel(name)

    def _lease(self, channel: str) -> timedelta:
        ch = self._channel(channel)
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
        target = self._channel(channel)
        kind = _STEP_KINDS[step["kind"]]
        if target is None:
            result = DeliveryResult.failed(channel, f"channel {channel!r} is no longer configured", permanent=True)
        else:
            if attempt == 1 and kind not in (NotificationKind.DIGEST, NotificationKind.REMINDER):
                # A person's deliveries are counted on their own, within the carrying channel's limit.
                facts = Facts(incident=incident, channel=self.pager.limit_channel(channel),
                              sent_in_window=self.counter.count(channel, now))
                decision = self.gates.check(facts, now, (GateName.RATE_LIMIT,))
                if decision.outcome is Outcome.RATE_LIMITED:
                    with self.db.transaction() as conn:
                        self._record_held(conn, step, delivery_id, channel, decision.reason, incident, now)
                    report.held += 1
                    return
            result = target.resolve(notification) if kind is NotificationKind.RESOLVE else target.send(notification)
        with self.db.transaction() as conn:
            self._record(conn, step, delivery_id, attempt, result, incident, now, report)

    def _record_held(self, conn: psycopg.Connection, step: Mapping[str, Any], delivery_id: int, channel: str,
                     detail: str, incident: Incident | None, now: datetime) -> None:
        conn.execute("UPDATE deliveries SET at = %s, ok = false, held = true, detail = %s WHERE id = %s",
                     (now, detail, delivery_id))
        if incident is not None:
            store.add_timeline(conn, incident.id, actor=ACTOR, worker=self.worker,
                               what=f"notification to {_label(channel)} {detail}",
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
        channel = _label(result.channel)
        person = parse_delivery(result.channel)
        what_kind = {"resolve": "resolve notice", "page": "page", "fyi": "FYI"}.get(step["kind"], f"level {step['level']} notification")
        if result.ok and person is not None and step["kind"] != "resolve":
            what = f"paged {person[0]} via {person[1]} ({what_kind}): {result.detail[:200]}"
        elif result.ok:
            what = f"{what_kind} sent to {channel}: {result.detail[:200]}"
        else:
            tries = f"attempt {attempt}/{self.config.retry.max_attempts}"
            then = (f"retry in {retry.delay:.1f} s" if retry_at is not None
                    else "giving up" + (" (permanent error)" if result.permanent else ""))
            what = f"{what_kind} to {channel} failed ({tries}): {result.detail[:200]}; {then}"
        store.add_timeline(conn, incident.id, actor=ACTOR, worker=self.worker, what=what,
                           details={**result.to_dict(), "attempt": attempt, "step": step["step_key"],
                                    "retry_at": retry_at.isoformat() if retry_at else None, "lost": lost,
                                    **({"person": person[0], "contact": person[1]} if person else {})})

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
                if done is not None and failed and step["kind"] == "page":
                    store.add_timeline(conn, step["incident_id"], actor=ACTOR, worker=self.worker,
                                       what="every delivery of the page failed: nobody was reached")
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
