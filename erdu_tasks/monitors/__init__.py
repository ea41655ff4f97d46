"""Monitors: the producers beat runs on the `monitor` queue.

- `logtail` (+ `logread`): tail log files exactly once, through rotation and truncation;
- `http_probe`: HTTP endpoints, an incident after N failures in a row;
- `system`: CPU, memory, disks and required processes, with sustained-for thresholds;
- `celery_health`: failed tasks, roles without a live worker, queue backlogs;
- `celery_apps` (+ `celery_events`): the team's own Celery apps, through their task events
  (run by `erdu celery-apps watch`, not by beat).

What to watch comes from the `monitors` settings section (`config`); probes, system and
Celery checks keep their state in Postgres (`state`). Every monitor reports through the
one ingest entry (erdu_tasks.ingest.accept, with the runtime's rules, catalog and settings)
with stable texts or dedup keys, so a condition that persists bumps one incident instead of
opening new ones.
"""
