"""Prometheus metrics read on scrape from Postgres and Redis, so every worker process counts alike.

The incident figures come from rollup tables that triggers keep in the transaction of every change to an
incident or its timeline (migration 0011_history), so a scrape costs the same at a thousand incidents and at a
million; the counters (`*_total`) come from incident_counters (migration 0055_counters), which only grows, so a
counter never goes down; failed tasks and deliveries are small tables read as they are. Every labelled series a
dashboard or an `increase()` alert needs is there from the first scrape, at 0.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import redis
import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from erdu_tasks.model import Severity
from erdu_tasks.names import ROLES, Stage
from erdu_tasks.redisconn import redis_client
from erdu_tasks.store import failed

# Seconds. MTTA/MTTR span seconds to a day; stages span milliseconds to minutes.
RESPONSE_BUCKETS: tuple[float, ...] = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)
STAGE_BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
STAGE_ROLES: tuple[str, ...] = ("commander", "diagnostician", "fixer", "resolver")
OPEN_EXCLUDED = ("resolved", "closed")
log = structlog.get_logger("erdu.metrics")
_PRIORITY_SEP = "\x06\x16"  # kombu's Redis transport keeps priorities 3, 6, 9 in "<queue>\x06\x16<n>"
_PRIORITY_STEPS = (3, 6, 9)


@dataclass
class Histogram:
    """Counts per bucket interval (index k: bounds[k-1] <= x < bounds[k], last is +Inf) and the sum."""

    counts: list[int]
    total: float = 0.0

    def cumulative(self, bounds: Sequence[float]) -> list[tuple[str, float]]:
        """Prometheus buckets: (le, cumulative count), ending with +Inf."""
        out, running = [], 0
        for bound, count in zip(bounds, self.counts):
            running += count
            out.append((_fmt(bound), running))
        out.append(("+Inf", running + sum(self.counts[len(bounds):])))
        return out


def _fmt(bound: float) -> str:
    return str(float(bound))


@dataclass
class Snapshot:
    """What one scrape read from Postgres and Redis (plain data; families() turns it into metrics)."""

    opened: list[tuple[str, str, int]] = field(default_factory=list)            # severity at opening, source, n
    closed: list[tuple[str, str, int]] = field(default_factory=list)
    by_status: list[tuple[str, str, str, int]] = field(default_factory=list)    # severity, source, status, n
    resolved_by: dict[str, int] = field(default_factory=dict)                   # automation|person -> n (ever)
    mtta: dict[str, Histogram] = field(default_factory=dict)                    # severity -> histogram
    mttr: dict[str, Histogram] = field(default_factory=dict)
    stage: dict[str, Histogram] = field(default_factory=dict)                   # role -> histogram
    failed_tasks: list[tuple[str, int, int]] = field(default_factory=list)      # stage, open, total
    notification_failures: list[tuple[str, int]] | None = None                  # channel, n (None: no table)
    channels: tuple[str, ...] = ()                                              # configured channel names
    queue_depth: dict[str, int] = field(default_factory=dict)
    unacked: dict[str, int] | None = None                                       # queue -> delivered, not acked
    postgres_up: bool = False
    redis_up: bool = False
    scrape_seconds: float = 0.0


def _histograms(rows: Iterable[dict[str, Any]], n_bounds: int) -> dict[str, Histogram]:
    out: dict[str, Histogram] = {}
    for row in rows:
        h = out.setdefault(row["label"], Histogram([0] * (n_bounds + 1)))
        h.counts[int(row["bucket"])] += int(row["n"])
        h.total += float(row["s"] or 0.0)
    return out


def read_postgres(conn: psycopg.Connection, snap: Snapshot) -> None:
    """Fill the incident figures from the rollups the stage transactions keep (migration 0011), not the history.

    Every figure is over the incidents that exist now, by current severity and status; a scrape reads a few
    hundred small rows whatever the size of the history.
    """
    q = conn.execute
    snap.by_status = [(r["severity"], r["source"], r["status"], int(r["n"])) for r in q(
        "SELECT severity, source, status, sum(incidents) AS n FROM incident_totals"
        " GROUP BY severity, source, status HAVING sum(incidents) > 0 ORDER BY severity, source, status").fetchall()]
    counters: dict[str, list[tuple[str, str, int]]] = {}
    for r in q("SELECT counter, severity, source, sum(n) AS n FROM incident_counters"
               " GROUP BY counter, severity, source ORDER BY counter, severity, source").fetchall():
        counters.setdefault(r["counter"], []).append((r["severity"], r["source"], int(r["n"])))
    snap.opened = counters.get("opened", [])
    snap.closed = counters.get("closed", [])
    snap.resolved_by = {by: sum(n for _, _, n in counters.get(f"resolved_{by}", [])) for by in ("automation", "person")}
    buckets = q("SELECT metric, label, bucket, sum(n) AS n, sum(total) AS s FROM duration_buckets"
                " GROUP BY metric, label, bucket HAVING sum(n) > 0 ORDER BY metric, label, bucket").fetchall()
    snap.mtta = _histograms((r for r in buckets if r["metric"] == "mtta"), len(RESPONSE_BUCKETS))
    snap.mttr = _histograms((r for r in buckets if r["metric"] == "mttr"), len(RESPONSE_BUCKETS))
    snap.stage = _histograms((r for r in buckets if r["metric"] == "stage" and r["label"] in STAGE_ROLES),
                             len(STAGE_BUCKETS))
    snap.failed_tasks = [(r["stage"], int(r["open"]), int(r["n"])) for r in q(
        f"SELECT coalesce(stage, 'none') AS stage, count(*) FILTER (WHERE {failed.OPEN}) AS open,"
        " count(*) AS n FROM failed_tasks GROUP BY 1 ORDER BY 1").fetchall()]
    if q("SELECT to_regclass('deliveries') IS NOT NULL AS t").fetchone()["t"]:
        snap.notification_failures = [(r["channel"], int(r["n"])) for r in q(
            "SELECT channel, count(*) FILTER (WHERE ok IS FALSE AND NOT held) AS n"
            " FROM deliveries GROUP BY channel ORDER BY channel").fetchall()]


def bucket_bounds(conn: psycopg.Connection) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (response, stage) bucket bounds the database's rollups count with (must equal this module's)."""
    row = conn.execute("SELECT erdu_response_bounds() AS response, erdu_stage_bounds() AS stage").fetchone()
    return tuple(float(b) for b in row["response"]), tuple(float(b) for b in row["stage"])


def read_redis(client: redis.Redis, queues: Sequence[str], snap: Snapshot) -> None:
    """Queue depth per queue (all priority lists of it) and the messages delivered but not yet acked."""
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.llen(queue)
        for step in _PRIORITY_STEPS:
            pipe.llen(f"{queue}{_PRIORITY_SEP}{step}")
    pipe.hvals(_UNACKED_KEY)
    values = pipe.execute()
    per = 1 + len(_PRIORITY_STEPS)
    for i, queue in enumerate(queues):
        snap.queue_depth[queue] = int(sum(values[i * per:(i + 1) * per]))
    snap.unacked = dict.fromkeys(queues, 0)
    for entry in values[-1]:
        queue = _unacked_queue(entry)
        queue = queue if queue in snap.unacked else "other"
        snap.unacked[queue] = snap.unacked.get(queue, 0) + 1


_UNACKED_KEY = "unacked"   # kombu's Redis transport: delivery tag -> [message, exchange, routing key]


def _unacked_queue(entry: bytes) -> str | None:
    """The routing key (ERDU routes each task to the queue of that name) of one unacked entry, None if unreadable.

    The broker is untrusted: an entry that is not kombu's triple counts as "other", never breaks the scrape."""
    try:
        triple = json.loads(entry)
        key = triple[2] if isinstance(triple, list) and len(triple) == 3 else None
    except (ValueError, TypeError, UnicodeDecodeError):
        return None
    return key if isinstance(key, str) else None


def families(snap: Snapshot) -> Iterator[Any]:
    """The metric families of one snapshot."""
    up = GaugeMetricFamily("erdu_backend_up", "1 if the scrape could read this backend", labels=["backend"])
    up.add_metric(["postgres"], 1 if snap.postgres_up else 0)
    up.add_metric(["redis"], 1 if snap.redis_up else 0)
    yield up
    took = GaugeMetricFamily("erdu_scrape_duration_seconds", "How long reading Postgres and Redis took")
    took.add_metric([], snap.scrape_seconds)
    yield took
    if snap.postgres_up:
        yield from _incident_families(snap)
    if snap.redis_up:
        depth = GaugeMetricFamily("erdu_queue_depth", "Messages waiting in each queue", labels=["queue"])
        for queue, n in sorted(snap.queue_depth.items()):
            depth.add_metric([queue], n)
        yield depth
        if snap.unacked is not None:
            unacked = GaugeMetricFamily("erdu_queue_unacked", "Messages delivered to a worker and not yet acked",
                                        labels=["queue"])
            for queue, n in sorted(snap.unacked.items()):
                unacked.add_metric([queue], n)
            yield unacked


SEVERITIES: tuple[str, ...] = tuple(s.value for s in Severity)
FAILED_STAGES: tuple[str, ...] = tuple(s.value for s in Stage)


def _incident_families(snap: Snapshot) -> Iterator[Any]:
    labels = ["severity", "source"]
    sources = sorted({src for _, src, _, _ in snap.by_status} | {src for _, src, _ in snap.opened})
    opened = CounterMetricFamily("erdu_incidents_opened", "Incidents opened (severity at opening)", labels=labels)
    closed = CounterMetricFamily("erdu_incidents_closed", "Incidents closed (severity at opening)", labels=labels)
    for family, rows in ((opened, snap.opened), (closed, snap.closed)):
        # Every severity of every source seen, from 0: increase() sees the first incident of a new severity.
        counts = {(sev, src): 0 for sev in SEVERITIES for src in sources}
        counts.update({(sev, src): n for sev, src, n in rows})
        for (sev, src), n in sorted(counts.items()):
            family.add_metric([sev, src], n)
        yield family
    current = GaugeMetricFamily("erdu_incidents", "Incidents by current status", labels=[*labels, "status"])
    open_now = {(sev, src): 0 for sev in SEVERITIES for src in sources}
    for sev, src, status, n in snap.by_status:
        current.add_metric([sev, src, status], n)
        if status not in OPEN_EXCLUDED:
            open_now[(sev, src)] = open_now.get((sev, src), 0) + n
    yield current
    open_ = GaugeMetricFamily("erdu_open_incidents", "Incidents not yet resolved or closed (current severity)",
                              labels=labels)
    for (sev, src), n in sorted(open_now.items()):
        open_.add_metric([sev, src], n)
    yield open_
    resolved = CounterMetricFamily("erdu_incidents_resolved", "Incidents resolved, by automation or a person",
                                   labels=["by"])
    for by in ("automation", "person"):
        resolved.add_metric([by], snap.resolved_by.get(by, 0))
    yield resolved
    total = sum(snap.resolved_by.values())
    ratio = GaugeMetricFamily("erdu_auto_resolve_ratio", "Share of resolved incidents resolved without a person")
    ratio.add_metric([], snap.resolved_by.get("automation", 0) / total if total else 0.0)
    yield ratio
    yield _histogram("erdu_mtta_seconds", "Time from detection to acknowledgement", "severity", snap.mtta,
                     RESPONSE_BUCKETS)
    yield _histogram("erdu_mttr_seconds", "Time from detection to resolution", "severity", snap.mttr,
                     RESPONSE_BUCKETS)
    yield _histogram("erdu_stage_latency_seconds", "Time a role took for its stage (from the previous status "
                     "change to its own)", "role", snap.stage, STAGE_BUCKETS)
    open_failed = GaugeMetricFamily("erdu_failed_tasks_open", "Failed stage tasks not yet retried", labels=["stage"])
    all_failed = CounterMetricFamily("erdu_failed_tasks", "Stage tasks that failed for good", labels=["stage"])
    failed_by_stage = {stage: (0, 0) for stage in FAILED_STAGES}   # every stage from 0, before its first failure
    failed_by_stage.update({stage: (n_open, n) for stage, n_open, n in snap.failed_tasks})
    for stage, (n_open, n) in sorted(failed_by_stage.items()):
        open_failed.add_metric([stage], n_open)
        all_failed.add_metric([stage], n)
    yield open_failed
    yield all_failed
    notify = CounterMetricFamily("erdu_notification_failures", "Notification deliveries that failed",
                                 labels=["channel"])
    per_channel = dict.fromkeys(snap.channels, 0)          # every configured channel from 0
    per_channel.update(snap.notification_failures or [])
    for channel, n in sorted(per_channel.items()):
        notify.add_metric([channel], n)
    yield notify


def _histogram(name: str, doc: str, label: str, data: dict[str, Histogram], bounds: Sequence[float]) -> Any:
    family = HistogramMetricFamily(name, doc, labels=[label])
    for value, h in sorted(data.items()):
        family.add_metric([value], h.cumulative(bounds), h.total)
    return family


class ErduCollector(Collector):
    """Reads Postgres and Redis on scrape (results reused for cache_seconds so many scrapers cost one read)."""

    def __init__(self, database_url: str, redis_url: str, *, queues: Sequence[str] = ROLES,
                 channels: Sequence[str] = (), cache_seconds: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.database_url = database_url
        self.queues = tuple(queues)
        self.channels = tuple(channels)
        self.cache_seconds = cache_seconds
        self.clock = clock
        self._redis = redis_client(redis_url, socket_connect_timeout=3, socket_timeout=5)
        self._lock = threading.Lock()
        self._cached: tuple[float, Snapshot] | None = None

    def snapshot(self) -> Snapshot:
        """A fresh or recent snapshot."""
        with self._lock:
            now = self.clock()
            if self._cached is not None and now - self._cached[0] < self.cache_seconds:
                return self._cached[1]
            snap = self._read()
            self._cached = (now, snap)
            return snap

    def _read(self) -> Snapshot:
        snap = Snapshot(channels=self.channels)
        started = time.perf_counter()
        try:
            # The timeout is set for the read's own transaction (SET LOCAL), not as a startup option,
            # which PgBouncer refuses, nor for the session, which PgBouncer would hand to another client.
            with psycopg.connect(self.database_url, connect_timeout=3, autocommit=True,
                                 row_factory=psycopg.rows.dict_row) as conn, conn.transaction():
                conn.execute("SET LOCAL statement_timeout = 10000")
                read_postgres(conn, snap)
            snap.postgres_up = True
        except psycopg.Error as exc:
            snap.postgres_up = False
            log.warning("metrics: cannot read Postgres", error=str(exc))
        try:
            read_redis(self._redis, self.queues, snap)
            snap.redis_up = True
        except (redis.RedisError, OSError) as exc:
            snap.redis_up = False
            log.warning("metrics: cannot read Redis", error=str(exc))
        snap.scrape_seconds = time.perf_counter() - started
        return snap

    def collect(self) -> Iterator[Any]:
        """Called by prometheus_client on every scrape."""
        yield from families(self.snapshot())


def build_registry(database_url: str, redis_url: str, **kwargs: Any) -> CollectorRegistry:
    """A registry holding only ERDU's collector (for `erdu metrics` or an ASGI/WSGI mount in the API)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ErduCollector(database_url, redis_url, **kwargs))
    return registry


def wsgi_app(database_url: str, redis_url: str, *, channels: Sequence[str] = ()) -> Callable[..., Iterable[bytes]]:
    """The metrics endpoint: /metrics (read from Postgres and Redis on each scrape) and /healthz (asks neither)."""
    from prometheus_client import make_wsgi_app

    metrics_app = make_wsgi_app(build_registry(database_url, redis_url, channels=channels))

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return metrics_app(environ, start_response)
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"see /metrics\n"]

    return app


def make_server(database_url: str, redis_url: str, *, port: int, address: str = "127.0.0.1",
                channels: Sequence[str] = ()) -> Any:
    """A threading WSGI server answering /metrics (and /healthz); the caller serves and closes it."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server as wsgi_server

    from prometheus_client.exposition import ThreadingWSGIServer

    class _Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    return wsgi_server(address, port, wsgi_app(database_url, redis_url, channels=channels), ThreadingWSGIServer,
                       handler_class=_Quiet)


def serve(database_url: str, redis_url: str, *, port: int, address: str = "127.0.0.1",
          channels: Sequence[str] = ()) -> None:
    """Serve /metrics (and /healthz) until the process is stopped."""
    with make_server(database_url, redis_url, port=port, address=address, channels=channels) as server:
        server.serve_forever()
