"""Run a Celery worker or beat in this process from the options `erdu worker` and `erdu beat` build.

`app.worker_main(argv)` and `app.start(argv)` go through Celery's command line, which first loads every
`celery.commands` plugin (Flower, with its web server and metrics) and the `celery shell` REPL: about a
fifth of a worker's start-up CPU, for nothing a worker or beat uses. Here the options are read from the
same argv and handed to `app.Worker` / `app.Beat`, as `celery worker` and `celery beat` do after parsing,
so `erdu worker`'s argv stays the one deployments and `celery worker` accept (erdu_tasks.cli.worker_argv).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

# worker_argv()'s options: the flag, the keyword app.Worker takes, and how its value is read (None: a switch).
_WORKER_OPTIONS: dict[str, tuple[str, Any]] = {
    "-Q": ("queues", str), "-n": ("hostname", str), "-c": ("concurrency", int), "-P": ("pool_cls", str),
    "--prefetch-multiplier": ("prefetch_multiplier", int), "-l": ("loglevel", str),
    "--max-tasks-per-child": ("max_tasks_per_child", int), "--max-memory-per-child": ("max_memory_per_child", int),
    "-E": ("task_events", None), "--without-gossip": ("without_gossip", None),
    "--without-mingle": ("without_mingle", None),
}


def worker_options(argv: list[str]) -> dict[str, Any]:
    """app.Worker's keywords for a `worker ...` argv of worker_argv(); an option it does not build is an error."""
    args = argv[1:] if argv and argv[0] == "worker" else list(argv)
    options: dict[str, Any] = {}
    i = 0
    while i < len(args):
        flag = args[i]
        if flag not in _WORKER_OPTIONS:
            raise ValueError(f"worker option {flag!r} is not one erdu worker builds")
        name, kind = _WORKER_OPTIONS[flag]
        if kind is None:
            options[name] = True
            i += 1
            continue
        if i + 1 >= len(args):
            raise ValueError(f"worker option {flag} needs a value")
        options[name] = kind(args[i + 1])
        i += 2
    return options


def run_worker(celery_app: Celery, argv: list[str]) -> int:
    """Start the worker in the foreground until it stops; its exit code (0 after a warm shutdown)."""
    from celery import signals
    from celery.utils.log import mlevel
    from celery.utils.nodenames import default_nodename, host_format

    from erdu_tasks.celery_ext import collector

    # The collector, held since the start (erdu_tasks.cli's worker command), resumes once the tasks are
    # imported, before the pool and the broker connection start.
    signals.worker_init.connect(collector.resume, weak=False, dispatch_uid="erdu-collector-resume")
    options = worker_options(argv)
    options["hostname"] = host_format(default_nodename(options.get("hostname")))
    options["loglevel"] = mlevel(str(options.get("loglevel", "INFO")).upper())
    worker = celery_app.Worker(**options)
    worker.start()
    return int(worker.exitcode or 0)


def run_beat(celery_app: Celery, *, loglevel: str, scheduler: str, max_interval: float) -> None:
    """Run beat in the foreground (what `celery beat -l L -S S --max-interval N` runs)."""
    celery_app.Beat(loglevel=loglevel, scheduler=scheduler, max_interval=max_interval).run()
