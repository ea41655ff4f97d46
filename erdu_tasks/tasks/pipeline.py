"""The stages commander (assess), diagnostician (diagnose) and resolver (resolve), and their shared wrapper."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from collections.abc import Callable
from pathlib import Path

import psycopg

from erdu_tasks.escalation import inhibition, runs as escalation
from erdu_tasks.escalation.start import escalate
from erdu_tasks.store import db, history, incidents as store
from erdu_tasks import names
from erdu_tasks.app import app, runtime
from erdu_tasks.model import Incident, Status, TimelineEntry
from erdu_tasks.names import Stage
from erdu_tasks.brains import Thought
from erdu_tasks.ingest import grouping
from erdu_tasks.ingest.detect.fingerprint import fingerprint
from erdu_tasks.roles.report import build_report, remove_report, render_markdown, report_paths, write_report
from erdu_tasks.roles import commander, diagnostician, logwindow, resolver
from erdu_tasks.runtime import Runtime, worker_name
from erdu_tasks.tasks.base import ErduTask, run_stage
from erdu_tasks.tasks.escalate import kick_sweep



def escalate_in_tx(conn: psycopg.Connection, incident: Incident, *, reason: str, stage: str | None,
                   actor: str, worker: str | None, details: dict | None = None) -> bool:
    """`escalation.start.escalate` for the stages: escalated, recorded and its run opened in this transaction."""
    return escalate(conn, incident, reason=reason, stage=stage, actor=actor, worker=worker, details=details)


# ---- commander -------------------------------------------------------------------------------

def commander_context(conn: psycopg.Connection, rt: Runtime, incident: Incident) -> commander.CommanderContext:
    """Gather what the commander weighs."""
    return commander_context_later(conn, rt, incident)()


def commander_context_later(conn: psycopg.Connection, rt: Runtime,
                            incident: Incident) -> Callable[[], commander.CommanderContext]:
    """commander_context with its reads sent now, together, and the context built when called."""
    from erdu_tasks.fixer.engine import matching_runbooks   # the fixer's runbook engine

    ccfg, lcfg = _configs(rt)
    records_later = history.runbook_records_later(conn, incident.fingerprint)
    open_later = store.count_open_later(conn)
    recurrences_later = history.recent_recurrences_later(conn, incident,
                                                         window_seconds=rt.settings.flap_window_seconds)

    def context() -> commander.CommanderContext:
        records = records_later()
        stats = {name: (r["attempts"], r["successes"]) for name, r in records.items()}
        runbooks = [commander.RunbookRecord(rb.name, *stats.get(rb.name, (0, 0)),
                                            (records.get(rb.name) or {}).get("last_outcome"), remedial=rb.remedial)
                    for rb in matching_runbooks(rt, incident, stats)]
        services, user_facing, dependants, user_facing_dependants = _blast_radius(rt, incident)
        return commander.CommanderContext(
            now=datetime.now(timezone.utc),
            config=ccfg,
            open_incidents=max(0, open_later() - (1 if incident.is_open else 0)),
            user_facing=user_facing,
            dependants=dependants,
            user_facing_dependants=user_facing_dependants,
            recent_recurrences=recurrences_later(),
            runbooks=runbooks,
            auto_min_success=lcfg.auto_resolve_min_success,
            auto_min_samples=lcfg.auto_resolve_min_samples,
        )

    return context


def _configs(rt: Runtime) -> tuple[commander.CommanderConfig, history.LearningConfig]:
    """The commander and learning sections of this process's settings."""
    return rt.commander, rt.learning


def _blast_radius(rt: Runtime, incident: Incident) -> tuple[list[str], list[str], list[str], list[str]]:
    """Affected services, the user-facing ones, their dependants (catalog) and the user-facing dependants."""
    services = list(dict.fromkeys(incident.affected_services or ([incident.service] if incident.service else [])))
    dependants = sorted({d for s in services for d in rt.catalog.dependants(s)} - set(services))
    return (services, [s for s in services if rt.catalog.is_user_facing(s)], dependants,
            [d for d in dependants if rt.catalog.is_user_facing(d)])


def _brain_note(conn: psycopg.Connection, incident_id: str, role: str, thought: Thought, worker: str, *,
                at: datetime | None = None) -> TimelineEntry | None:
    """Put a brain's fallback, with its reason, on the incident's timeline; stamped `at`, the line as it will
    read back (None when there is no fallback to note, or no `at`)."""
    if not thought.fallback:
        return None
    what = f"{role}: LLM brain not used ({thought.fallback}); decided by the rules"
    details = {"brain": thought.note()}
    store.add_timeline(conn, incident_id, actor=role, worker=worker, what=what, details=details, at=at)
    return store.timeline_entry(at=at, actor=role, worker=worker, what=what, details=details) if at else None


def _advice_note(conn: psycopg.Connection, incident_id: str, decision: commander.Assessment, worker: str) -> None:
    """Put what the rules refused of a model's advice on the incident's timeline."""
    advice = decision.advice
    if advice and advice.get("bounded"):
        store.add_timeline(conn, incident_id, actor="commander", worker=worker,
                           what=("commander: the model's advice was bounded by the rules: "
                                 + "; ".join(advice["bounded"])),
                           details={"advice": advice})


def _assess(conn: psycopg.Connection, rt: Runtime, incident: Incident, worker: str) -> Stage | None:
    context = commander_context_later(conn, rt, incident)   # sent with the gate's read: one round trip
    if escalation.gate_before_assess(conn, rt.gates, incident, worker=worker):   # silenced: parked; the sweeper resumes it
        return None
    thought = rt.brains.commander.assess(incident, context())
    decision = thought.value
    assessment = {**decision.as_dict(), "brain": thought.note()}
    _brain_note(conn, incident.id, "commander", thought, worker)
    _advice_note(conn, incident.id, decision, worker)
    incident.severity = decision.severity     # as assessed: a P1 now adopts its dependants' open incidents
    escalation.link_children_after_assess(conn, rt.gates, incident, worker=worker)
    if decision.decision is commander.Decision.ESCALATE:
        store.update_fields(conn, incident.id, {"severity": decision.severity, "assessment": assessment})
        escalate_in_tx(conn, incident, reason=decision.reasons[-1], stage=Stage.ASSESS, actor="commander",
                       worker=worker, details=assessment)
        return None
    auto = decision.decision is commander.Decision.AUTO_FIX
    what = (f"assessed {decision.severity.value}: " + ("auto-resolution via " + str(decision.runbook)
                                                       if auto else "automate")
            + (" (with the model's advice, within the rules' bounds)" if decision.advice else ""))
    moved = store.transition(conn, incident.id, expected=[Status.DETECTED], to=Status.ASSIGNED,
                             actor="commander", worker=worker, what=what,
                             updates={"severity": decision.severity, "assessment": assessment,
                                      "auto_resolved": auto},
                             details={"reasons": decision.reasons, "brain": thought.note()},
                             status_now=incident.status)
    if moved is None:
        return None
    return Stage.FIX if auto else Stage.DIAGNOSE


@app.task(name=names.ASSESS, base=ErduTask, bind=True, stage=Stage.ASSESS)
def assess(self: ErduTask, incident_id: str) -> Stage | None:
    """Commander: assess severity and decide the path."""
    return run_stage(self, Stage.ASSESS, incident_id, _assess)


def reassess_in_tx(conn: psycopg.Connection, rt: Runtime, incident: Incident, worker: str) -> bool:
    """A severity rise after the assessment: assess again at the new severity; True if it escalated now.

    Where the rules (or the bounded model) escalate that severity, the incident is escalated at once and
    pages under its policy; otherwise the pipeline goes on, carrying the new severity into the fix and
    into its escalation if the fix fails. A silenced incident stays quiet (the gate decides, as always).
    """
    if incident.status not in names.REASSESSED_IN:
        return False
    if escalation.gate_before_assess(conn, rt.gates, incident, worker=worker):
        return False
    thought = rt.brains.commander.assess(incident, commander_context(conn, rt, incident))
    decision = thought.value
    _brain_note(conn, incident.id, "commander", thought, worker)
    _advice_note(conn, incident.id, decision, worker)
    if decision.decision is commander.Decision.ESCALATE:
        assessment = {**decision.as_dict(), "brain": thought.note(), "reassessed": True}
        return escalate_in_tx(conn, incident, reason=f"re-assessed at {incident.severity.value}: "
                              + decision.reasons[-1], stage=Stage.ASSESS, actor="commander", worker=worker,
                              details=assessment)
    store.add_timeline(conn, incident.id, actor="commander", worker=worker,
                       what=f"re-assessed at {incident.severity.value}: {decision.decision.value}; "
                            f"the pipeline goes on ({decision.reasons[-1] if decision.reasons else 'no change'})",
                       details={"reasons": decision.reasons})
    return False


@app.task(name=names.REASSESS, base=ErduTask, bind=True)
def reassess(self: ErduTask, incident_id: str) -> bool:
    """Commander: an assessed incident's severity rose; assess it again (see reassess_in_tx)."""
    rt = runtime()
    worker = worker_name(self.request.hostname)

    def run() -> bool:
        with rt.db.transaction() as conn:
            incident = store.get_incident(conn, incident_id, for_update=True)
            return incident is not None and reassess_in_tx(conn, rt, incident, worker)

    escalated = self.with_retries(run)
    if escalated:
        kick_sweep()
    return escalated





# ---- diagnostician ---------------------------------------------------------------------------

def diagnostician_context(conn: psycopg.Connection, rt: Runtime,
                          incident: Incident) -> diagnostician.DiagnosticianContext:
    """Gather the evidence: related incidents, the pattern's history and fixes, log lines, runbook hints.

    The reads are sent together (one round trip on a pipelined connection), then read; the log window's
    owners, when the incident names a log file, are looked up after the file is read."""
    from erdu_tasks.fixer.engine import matching_runbooks

    _, lcfg = _configs(rt)
    related_later = _related_later(conn, rt, incident)
    records_later = history.runbook_records_later(conn, incident.fingerprint)
    pattern_later = history.pattern_later(conn, incident.fingerprint)
    related = [diagnostician.Related(r["id"], r["title"], r["status"], r["score"], r["root_cause"],
                                     r["same_fingerprint"], r["runbook"], r["resolved_by"], r["created_at"])
               for r in related_later()]
    records = records_later()
    fixes = [diagnostician.FixRecord(name, r["attempts"], r["successes"],
                                     history.success_rate(r["attempts"], r["successes"],
                                                          lcfg.auto_resolve_min_samples), r["last_outcome"])
             for name, r in sorted(records.items())]
    stats = {name: (r["attempts"], r["successes"]) for name, r in records.items()}
    return diagnostician.DiagnosticianContext(
        related=related,
        pattern=_pattern_history_of(pattern_later()),
        fixes=fixes,
        log=_log_evidence(conn, rt, incident, lcfg),
        runbook_hints={rb.name: rb.diagnosis_hint or rb.description or rb.name
                       for rb in matching_runbooks(rt, incident, stats)},
    )


def _related(conn: psycopg.Connection, rt: Runtime, incident: Incident) -> list[dict]:
    """The incident's related incidents: searched once (kept on the incident by the diagnostician), then re-read."""
    return _related_later(conn, rt, incident)()


def _related_later(conn: psycopg.Connection, rt: Runtime, incident: Incident) -> Callable[[], list[dict]]:
    """_related, sent now; the search's result is kept on the incident when read."""
    if incident.related is not None:
        return history.refresh_related_later(conn, incident.related)
    _, lcfg = _configs(rt)
    found = history.related_incidents_later(conn, incident, limit=lcfg.related_limit,
                                            min_score=lcfg.related_min_score,
                                            lookback_days=lcfg.related_lookback_days)

    def kept() -> list[dict]:
        incident.related = found()
        return incident.related

    return kept


def _pattern_history_of(pat: dict | None) -> diagnostician.PatternHistory:
    pat = pat or {}
    return diagnostician.PatternHistory(
        incidents=int(pat.get("incidents", 0)), occurrences=int(pat.get("occurrences", 0)),
        resolved=int(pat.get("resolved", 0)), escalated=int(pat.get("escalated", 0)),
        auto_resolved=int(pat.get("auto_resolved", 0)), mean_time_to_resolve=pat.get("mean_time_to_resolve"))


def _log_evidence(conn: psycopg.Connection, rt: Runtime, incident: Incident,
                  lcfg: history.LearningConfig) -> logwindow.LogWindow | None:
    """The lines around the event's first occurrence in the log file it names (only under configured log
    roots), bounded by time, without the lines that belong to other incidents."""
    path = logwindow.log_path_of(incident.labels, incident.error_details)
    if path is None:
        return None
    offset = incident.labels.get("offset")
    roots = [*lcfg.evidence.log_roots, *logwindow.monitor_paths(rt.settings.monitors)]
    window = logwindow.read_window(
        path, message=incident.error_details.get("message") or incident.description,
        at=first_occurrence(incident), cfg=lcfg.evidence, roots=roots,
        offset=int(offset) if isinstance(offset, str) and offset.isdigit() else None)
    return logwindow.without_lines_of(window, _owners_of_lines(conn, incident, window))


def _owners_of_lines(conn: psycopg.Connection, incident: Incident, window: logwindow.LogWindow) -> dict[int, str]:
    """Position -> the other incident a line of the window belongs to: its fingerprint, computed as the log
    monitor computes it, is another incident's (a line of this incident's own fingerprint stays)."""
    overrides = grouping.current(conn)   # merges and splits people made: as ingest files each line
    keys = {i: overrides.resolve(fingerprint(line.text, incident.service), line.text, incident.service).key
            for i, line in enumerate(window.lines) if not line.event and line.text.strip()}
    keys = {i: key for i, key in keys.items() if key != incident.fingerprint}
    owner = history.latest_incidents_of(conn, list(keys.values()), exclude=incident.id)
    return {i: owner[key] for i, key in keys.items() if key in owner}


def first_occurrence(incident: Incident) -> datetime | None:
    """When the incident's first event happened: as its producer stamped it, else when it was stored."""
    stamped = (incident.error_details or {}).get("occurred_at")
    if isinstance(stamped, str):
        try:
            moment = datetime.fromisoformat(stamped)
        except ValueError:
            moment = None
        if moment is not None:
            return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return incident.created_at


def _diagnose(conn: psycopg.Connection, rt: Runtime, incident: Incident, worker: str) -> Stage | None:
    thought = rt.brains.diagnostician.diagnose(incident, diagnostician_context(conn, rt, incident))
    result = thought.value
    _brain_note(conn, incident.id, "diagnostician", thought, worker)
    moved = store.transition(conn, incident.id, expected=[Status.ASSIGNED], to=Status.INVESTIGATING,
                             actor="diagnostician", worker=worker,
                             what=(f"diagnosed (confidence {result.confidence:.2f}"
                                   + (", the model's advice" if thought.brain != "rules" and result.established
                                      else "") + f"): {result.root_cause}"),
                             updates={"diagnosis": {**result.as_dict(), "brain": thought.note()},
                                      "root_cause": result.root_cause if result.established else None,
                                      "related": incident.related},
                             details={"evidence": result.evidence, "skill_gaps": result.skill_gaps,
                                      "related": [r["id"] for r in result.related], "brain": thought.note()},
                             status_now=incident.status)
    return Stage.FIX if moved else None


@app.task(name=names.DIAGNOSE, base=ErduTask, bind=True, stage=Stage.DIAGNOSE)
def diagnose(self: ErduTask, incident_id: str) -> Stage | None:
    """Diagnostician: evidence and a root-cause hypothesis."""
    return run_stage(self, Stage.DIAGNOSE, incident_id, _diagnose)





# ---- resolver --------------------------------------------------------------------------------

def close_incident(conn: psycopg.Connection, rt: Runtime, incident: Incident, worker: str, *,
                   actor: str = "resolver", human: bool = False) -> bool:
    """Write the report, learn from the incident and move it resolved -> closed.

    On a pipelined connection this takes two round trips after the incident was read: the escalation's
    stop goes with every read the resolver and the report need, the transaction's clock among them; the
    close, its learning and the commit go together. The report is written before them, from the incident
    as the close leaves it (_close) and the pattern as its learning leaves it, so a failure to write it
    rolls the close back; it stands only if the close commits and moved the incident (_write_standing).
    An incident that was escalated, has children or pages an FYI takes one more.
    """
    _, lcfg = _configs(rt)
    resolved_later = escalation.on_resolved_later(conn, incident, worker=worker)   # stop escalation, notices, children
    timeline_later = store.timeline_later(conn, incident.id)
    context_later = _resolver_context_later(conn, rt, incident)
    situation_later = history.same_situation_later(conn, incident, window_seconds=lcfg.situation_window_seconds)
    clock_later = db.clock_later(conn)
    done = resolved_later()
    fyi = resolver.fyi_reason(incident, notified=done.notified)
    if fyi is not None:   # a P1 closed without a repair: the policy's first level hears of it
        entry = rt.catalog.services.get(incident.service or "")
        escalation.queue_fyi(conn, incident, escalation.escalation_config(rt.settings.escalation,
                                                                          rt.settings.alerts_dir),
                             reason=fyi, policy_name=entry.escalation_policy if entry else None, worker=worker)
    children: Callable[[], list[dict]] = lambda: []
    if done.wrote_timeline or fyi:
        # The close's escalation part wrote: the timeline, the children and the clock are read again, after
        # those writes (their lines are stamped as they are inserted; the close's must come after them).
        timeline_later = store.timeline_later(conn, incident.id)
        children = inhibition.children_of_later(conn, incident.id)
        clock_later = db.clock_later(conn)
    incident.timeline = timeline_later()
    clock = clock_later()
    ctx, records, pattern = context_later()
    thought = rt.brains.resolver.resolve(incident, ctx)
    note = _brain_note(conn, incident.id, "resolver", thought, worker, at=clock.at())
    if incident.status is not Status.RESOLVED:   # held locked: the close's compare-and-set would not move it
        return False
    closed, moved = _close(conn, rt, incident, thought, clock, note, actor=actor, worker=worker)
    history.record_resolution(conn, incident, human=human)
    learned = history.pattern_after_resolution(pattern, incident, human=human)
    report = build_report(closed, {**thought.value.as_dict(), "brain": thought.note()}, related=ctx.related,
                          learning=_learning(rt, learned, records, lcfg),
                          children=children(), situation=situation_later())
    _write_standing(conn, rt, report, moved)
    return True


def _close(conn: psycopg.Connection, rt: Runtime, incident: Incident, thought: Thought[resolver.Resolution],
           clock: db.Clock, note: TimelineEntry | None, *, actor: str,
           worker: str) -> tuple[Incident, Callable[[], Status | None]]:
    """Send the close (resolved -> closed with the resolution's fields, its line stamped from `clock`): the
    incident as get_incident will read it back after the commit (its timeline with the brain's `note`, sent
    before, and the close's line), and the reader of the close's own answer."""
    resolution = thought.value
    json_path, md_path = report_paths(rt.settings.reports_dir, incident.id)
    updates = {"lessons_learned": resolution.lessons_learned, "follow_ups": resolution.follow_ups,
               "report_path": str(md_path)}
    if resolution.root_cause and not incident.root_cause:
        updates["root_cause"] = resolution.root_cause
    line = store.timeline_entry(at=clock.at(), actor=actor, worker=worker, from_status=incident.status,
                                to_status=Status.CLOSED, what=f"closed; report {md_path.name}",
                                details={"summary": resolution.summary, "report_json": str(json_path),
                                         "brain": thought.note()})
    moved = store.transition_later(conn, incident.id, expected=[Status.RESOLVED], to=Status.CLOSED, actor=actor,
                                   worker=worker, what=line.what, updates=updates, details=line.details,
                                   at=line.at)
    closed = store.after_transition(incident, to=Status.CLOSED, now=clock.now, updates=updates)
    closed.timeline += [*([note] if note else []), line]
    return closed, moved


def _write_standing(conn: psycopg.Connection, rt: Runtime, report: dict,
                    moved: Callable[[], Status | None]) -> None:
    """Write the report before the close commits; it stands only if the commit comes and the close moved the
    incident, else its files are removed (before the rollback, while the incident's lock keeps a retry of the
    stage from writing its own). A worker lost in between leaves them: the retry writes them again, and until
    then they are not the final report (current_report: the close that commits sets report_path)."""
    def stands(committed: bool) -> None:
        if not committed or moved() is None:
            remove_report(rt.settings.reports_dir, report["id"])

    db.when_settled(conn, stands)
    write_report(rt.settings.reports_dir, report)


def _resolver_context(conn: psycopg.Connection, rt: Runtime, incident: Incident) -> resolver.ResolverContext:
    """What the resolver (and the interim report) know beyond the incident: blast radius, history, related."""
    return _resolver_context_later(conn, rt, incident)()[0]


def _resolver_context_later(conn: psycopg.Connection, rt: Runtime, incident: Incident
                            ) -> Callable[[], tuple[resolver.ResolverContext, dict[str, dict], dict | None]]:
    """_resolver_context with its reads sent now; called, the context, and the runbook records and the
    pattern (history.pattern) it read."""
    _, lcfg = _configs(rt)
    records_later = history.runbook_records_later(conn, incident.fingerprint)
    pattern_later = history.pattern_later(conn, incident.fingerprint)
    known_later = (lambda: None) if incident.root_cause else history.last_root_cause_later(
        conn, incident.fingerprint, exclude=incident.id)
    related_later = _related_later(conn, rt, incident)

    def context() -> tuple[resolver.ResolverContext, dict[str, dict], dict | None]:
        services, user_facing, dependants, user_facing_dependants = _blast_radius(rt, incident)
        records = records_later()
        used = records.get((incident.fix or {}).get("runbook") or "", {})
        known = known_later()
        return resolver.ResolverContext(
            now=datetime.now(timezone.utc),
            user_facing=user_facing,
            user_facing_dependants=user_facing_dependants,
            dependants=dependants,
            pattern=_pattern_history_of(pattern_later()),
            runbook_attempts=int(used.get("attempts", 0)),
            runbook_successes=int(used.get("successes", 0)),
            known_root_cause=known["root_cause"] if known else None,
            known_root_cause_from=known["id"] if known else None,
            related=related_later(),
            min_samples=lcfg.auto_resolve_min_samples,
        ), records, pattern_later()

    return context


def report_so_far(conn: psycopg.Connection, rt: Runtime, incident_id: str) -> dict | None:
    """The interim report ("what we know so far") of an incident escalated and not yet resolved, as of now.

    Built when asked, from the incident as it stands, so it follows every stage (acknowledged, retried, a new
    fix, approved); the resolver writes the final report at close. None when the incident was never escalated
    or is already resolved (its final report is the file)."""
    incident = store.get_incident(conn, incident_id, with_timeline=True)
    if incident is None or incident.escalated_at is None or incident.resolved_at is not None:
        return None
    _, lcfg = _configs(rt)
    ctx = _resolver_context(conn, rt, incident)
    row = conn.execute("SELECT reason FROM escalations WHERE incident_id = %s ORDER BY id DESC LIMIT 1",
                       (incident.id,)).fetchone()
    resolution = resolver.so_far(incident, ctx, reason=row["reason"] if row else None)
    report = build_report(incident, resolution.as_dict(), related=ctx.related,
                          learning=pattern_learning(conn, rt, incident.fingerprint, lcfg),
                          children=inhibition.children_of(conn, incident.id),
                          situation=history.same_situation(conn, incident,
                                                           window_seconds=lcfg.situation_window_seconds),
                          final=False)
    report["as_of"] = ctx.now.isoformat()
    return report


def current_report(conn: psycopg.Connection, rt: Runtime, incident_id: str) -> tuple[dict, str] | None:
    """The report people read now, as (data, Markdown): the final one once written, else the interim one of
    an escalated incident, else None (ERDU is still handling it, or there is no such incident).

    The final one is the file of a close that committed (it set report_path): the resolver writes the file
    before its commit, so a worker lost in between leaves a file that is not the final report."""
    row = conn.execute("SELECT report_path FROM incidents WHERE id = %s", (incident_id,)).fetchone()
    if row is None:
        return None
    json_path, _ = report_paths(rt.settings.reports_dir, incident_id)
    md_path = Path(row["report_path"]) if row["report_path"] else None
    if md_path is not None and md_path.is_file():
        try:
            data = json.loads(json_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {"id": incident_id}
        return {**data, "final": True}, md_path.read_text(encoding="utf-8", errors="replace")
    interim = report_so_far(conn, rt, incident_id)
    return (interim, render_markdown(interim)) if interim is not None else None


def pattern_learning(conn: psycopg.Connection, rt: Runtime, fingerprint: str, lcfg: history.LearningConfig) -> dict:
    """What the pattern's counters say now (for the report and the console): runbook rates, auto-resolution."""
    pattern_later = history.pattern_later(conn, fingerprint)
    records_later = history.runbook_records_later(conn, fingerprint)
    return _learning(rt, pattern_later(), records_later(), lcfg)


def _learning(rt: Runtime, pattern: dict | None, records: dict[str, dict], lcfg: history.LearningConfig) -> dict:
    """pattern_learning from the pattern's row and its runbook records, as read."""
    pat = _pattern_history_of(pattern)
    loaded = {rb.name: rb for rb in rt.runbooks.runbooks}
    runbooks = [commander.RunbookRecord(name, r["attempts"], r["successes"], r["last_outcome"],
                                        remedial=loaded[name].remedial if name in loaded else True)
                for name, r in sorted(records.items())]
    return {
        "pattern": {"incidents": pat.incidents, "occurrences": pat.occurrences, "resolved": pat.resolved,
                    "escalated": pat.escalated, "auto_resolved": pat.auto_resolved,
                    "mean_time_to_resolve": pat.mean_time_to_resolve},
        "runbooks": [{"name": r.name, "attempts": r.attempts, "successes": r.successes,
                      "success_rate": r.rate(lcfg.auto_resolve_min_samples), "last_outcome": r.last_outcome}
                     for r in runbooks],
        "auto_resolution": commander.auto_resolution_status(runbooks, lcfg.auto_resolve_min_success,
                                                            lcfg.auto_resolve_min_samples),
    }


def _resolve(conn: psycopg.Connection, rt: Runtime, incident: Incident, worker: str) -> Stage | None:
    close_incident(conn, rt, incident, worker, human=bool(incident.resolved_by
                                                          and incident.resolved_by.startswith("person:")))
    return None


@app.task(name=names.RESOLVE, base=ErduTask, bind=True, stage=Stage.RESOLVE)
def resolve(self: ErduTask, incident_id: str) -> Stage | None:
    """Resolver: report, learning, close."""
    return run_stage(self, Stage.RESOLVE, incident_id, _resolve)



