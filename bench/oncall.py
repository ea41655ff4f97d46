"""How fast ERDU answers "who is on call" and pages people.

Usage: python bench/oncall.py [--incidents N] [--repeat R] [--json PATH]

- who/next, rotation: `who_is_on_call` and `next_handoff` on a schedule of three weekly/daily layers and
  200 overrides, at random moments over two years (microseconds per call, median and p95).
- who/next, calendar: the same through `Rota` on an iCal file of 400 weekly-recurring events (20,800
  occurrences) at moments moving forward 5 minutes at a time, as the sweeper asks (the file is read and its
  recurrences expanded once, then reused), and that first read: parse + recurrence expansion.
- paging: N P1 incidents escalated at once, one sweep with the Escalator against a private Postgres
  database, each level paging the person on call by schedule through a webhook contact on a local HTTP
  server; reports the sweep's wall time and milliseconds per page, best of R runs; and the same sweep
  notifying a webhook channel instead (the baseline that paging a person is compared with).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from datetime import date, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from erdu_tasks.escalation import oncall  # noqa: E402
from erdu_tasks.escalation.schedules import Rota  # noqa: E402
from erdu_tasks.settings.people import Person  # noqa: E402
from erdu_tasks.settings.schedules import OncallConfig, ScheduleConfig  # noqa: E402

PEOPLE = [f"p{i:02d}" for i in range(20)]
START = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"median_us": round(statistics.median(ordered) * 1e6, 1),
            "p95_us": round(ordered[int(len(ordered) * 0.95)] * 1e6, 1)}


def _rotation_schedule() -> ScheduleConfig:
    rng = random.Random(7)
    overrides = []
    for _ in range(200):
        begin = START + timedelta(hours=rng.randrange(0, 2 * 365 * 24))
        overrides.append({"start": begin.isoformat(), "end": (begin + timedelta(hours=rng.randrange(2, 72))).isoformat(),
                          "person": rng.choice(PEOPLE)})
    return ScheduleConfig.model_validate({"time_zone": "Europe/Berlin", "overrides": overrides, "layers": [
        {"start": "2026-01-05", "rotation": "weekly", "participants": PEOPLE[:6]},
        {"start": "2026-01-01", "rotation": "daily", "handoff": "18:00", "participants": PEOPLE[6:10]},
        {"start": "2026-06-01", "end": "2027-06-01", "rotation": "12h", "participants": PEOPLE[10:14]}]})


def _moments(n: int) -> list[datetime]:
    rng = random.Random(11)
    return [START + timedelta(seconds=rng.randrange(0, 2 * 365 * 86400)) for _ in range(n)]


def _time_calls(fn, moments) -> list[float]:
    samples = []
    for moment in moments:
        began = time.perf_counter()
        fn(moment)
        samples.append(time.perf_counter() - began)
    return samples


def _calendar_file(folder: Path) -> Path:
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//erdu bench//EN"]
    for i in range(400):
        day = date(2026, 1, 1) + timedelta(days=i % 365)
        lines += ["BEGIN:VEVENT", f"UID:e{i}@bench", f"DTSTART;TZID=Europe/Berlin:{day:%Y%m%d}T{8 + i % 10:02d}0000",
                  f"DTEND;TZID=Europe/Berlin:{day:%Y%m%d}T{9 + i % 10:02d}3000", "RRULE:FREQ=WEEKLY;COUNT=52",
                  f"SUMMARY:On call: {PEOPLE[i % len(PEOPLE)]}", "END:VEVENT"]
    lines.append("END:VCALENDAR")
    path = folder / "bench.ics"
    path.write_text("\r\n".join(lines) + "\r\n")
    return path


def bench_resolution(calls: int) -> dict[str, object]:
    """Per-call latency of the pure answers and of the calendar-backed Rota."""
    schedule = _rotation_schedule()
    moments = _moments(calls)
    out: dict[str, object] = {
        "rotation_who": _stats(_time_calls(lambda t: oncall.who_is_on_call("s", schedule, t), moments)),
        "rotation_next": _stats(_time_calls(lambda t: oncall.next_handoff("s", schedule, t), moments)),
    }
    with tempfile.TemporaryDirectory() as folder:
        path = _calendar_file(Path(folder))
        config = OncallConfig.from_section({"schedules": {"cal": {"time_zone": "Europe/Berlin", "calendar": str(path)}}})
        rota = Rota(config, {p: Person() for p in PEOPLE})
        began = time.perf_counter()
        rota.now("cal", moments[0])
        out["calendar_first_read_ms"] = round((time.perf_counter() - began) * 1000, 1)
        # As the sweeper asks: moments moving forward (every 5 minutes over a week), the expansion reused.
        ahead = [moments[0] + timedelta(minutes=5 * i) for i in range(min(calls, 2016))]
        out["calendar_who"] = _stats(_time_calls(lambda t: rota.now("cal", t), ahead))
        out["calendar_next"] = _stats(_time_calls(lambda t: rota.next("cal", t), ahead))
    return out


class _Sink:
    """A local HTTP server that answers 200 and counts requests."""

    def __init__(self) -> None:
        outer = self
        self.count = 0
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with lock:
                    outer.count += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def bench_paging(incidents: int, repeat: int, *, target: str = "schedule") -> dict[str, object]:
    """One sweep paging N escalated P1 incidents' on-call person (target "schedule"), or notifying a webhook
    channel (target "channel", the baseline), against a real database."""
    import secrets

    from bench._harness import BenchStack
    from erdu_tasks.escalation.runs import escalation_config
    from erdu_tasks.escalation.start import escalate
    from erdu_tasks.escalation.sweep import Escalator
    from erdu_tasks.model import Severity
    from erdu_tasks.store import incidents as store
    from erdu_tasks.store.db import Database
    from erdu_tasks.store.incidents import NewIncident

    sink = _Sink()
    runs = []
    try:
        with BenchStack() as stack:
            db = Database(stack.database_url, max_size=4)
            people = {p: Person.model_validate({"contacts": {"webhook": f"{sink.url}/{p}"}}) for p in PEOPLE[:4]}
            config = OncallConfig.from_section({"schedules": {"primary": {"layers": [
                {"start": "2020-01-06", "rotation": "weekly", "participants": PEOPLE[:4]}]}}})
            section = {"channels": {"team": {"type": "webhook", "url": f"{sink.url}/team",
                                             "secret": "a-long-shared-secret-for-hmac", "max_per_minute": 10_000}},
                       "policies": {"P1": [{"schedule": "primary", "ack_deadline": "5m"} if target == "schedule"
                                           else {"channels": ["team"], "ack_deadline": "5m"}, {"channels": ["team"]}]}}
            for _ in range(repeat):
                esc = Escalator(db=db, config=escalation_config(section, stack.tmp / "alerts"), people=people,
                                oncall=config, rate_prefix=f"bench:{secrets.token_hex(3)}:")
                now = datetime.now(timezone.utc)
                with db.transaction() as conn:
                    # The previous round's incidents are done with: acknowledged, their runs stopped.
                    conn.execute("UPDATE incidents SET status = 'acknowledged' WHERE status = 'escalated'")
                    conn.execute("UPDATE escalation_runs SET stopped_at = now(), next_at = NULL WHERE stopped_at IS NULL")
                    for _ in range(incidents):
                        iid = store.upsert_incident(conn, NewIncident(
                            fingerprint=f"fp-{secrets.token_hex(6)}", template="t", title="bench", description="",
                            severity=Severity.P1, source="bench", service="svc", host=None, affected_services=[],
                            tags=[], labels={}, error_details={}, samples=[], count=1)).incident_id
                        incident = store.get_incident(conn, iid, for_update=True)
                        escalate(conn, incident, reason="bench", stage="fix", actor="bench", worker=None, now=now)
                before = sink.count
                began = time.perf_counter()
                report = esc.sweep(now)
                took = time.perf_counter() - began
                esc.close()
                runs.append({"seconds": round(took, 3), "pages": sink.count - before, "sent": report.sent})
            db.close()
    finally:
        sink.close()
    best = min(runs, key=lambda r: r["seconds"])
    return {"target": target, "incidents": incidents, "runs": runs, "best_seconds": best["seconds"],
            "ms_per_page": round(best["seconds"] * 1000 / max(best["pages"], 1), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--incidents", type=int, default=100, help="incidents paged in one sweep")
    parser.add_argument("--repeat", type=int, default=3, help="paging runs (the best is reported)")
    parser.add_argument("--calls", type=int, default=2000, help="resolution calls per measurement")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    result = {"resolution": bench_resolution(args.calls),
              "paging": bench_paging(args.incidents, args.repeat),
              "baseline_channel": bench_paging(args.incidents, args.repeat, target="channel")}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
