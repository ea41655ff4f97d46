"""`erdu worker`: the Celery arguments for one role, several roles in one process, and node names."""

from __future__ import annotations

import pytest
import typer

from erdu_tasks.cli.main import worker_argv, worker_roles
from erdu_tasks.monitors.celery_health import live_roles
from erdu_tasks.names import ROLES
from erdu_tasks.settings import Settings


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_one_role_runs_with_its_own_pool_settings_and_node_name():
    argv = worker_argv(["fixer"], Settings(), hostname="host-a")
    assert (option(argv, "-Q"), option(argv, "-P"), option(argv, "-c"), option(argv, "-n")) == (
        "fixer", "prefork", "2", "fixer@host-a")
    assert "--max-tasks-per-child" in argv


def test_several_roles_share_one_thread_pool_as_large_as_their_pools_and_keep_their_queues():
    settings = Settings(worker_concurrency={"commander": 2})
    argv = worker_argv(["ingest", "commander", "fixer"], settings)
    assert option(argv, "-Q") == "ingest,commander,fixer"
    assert option(argv, "-P") == "threads"
    assert option(argv, "-c") == str(4 + 2 + 2)   # ingest 4, commander 2 (set), fixer 2
    assert option(argv, "-n") == "ingest+commander+fixer@%h"
    assert "--max-tasks-per-child" not in argv
    assert option(worker_argv(["ingest", "fixer"], settings, concurrency=3), "-c") == "3"


def test_role_specs_all_commas_and_unknown_roles():
    assert worker_roles("all") == list(ROLES)
    assert worker_roles("ingest, fixer,ingest") == ["ingest", "fixer"]
    for bad in ("nobody", "ingest,nobody", ","):
        with pytest.raises(typer.Exit):
            worker_roles(bad)


def test_the_health_monitor_counts_a_combined_worker_for_each_of_its_roles():
    live = live_roles({"ingest+commander@h1": {"ok": "pong"}, "fixer@h2": {"ok": "pong"}})
    assert live == {"ingest": ["ingest+commander@h1"], "commander": ["ingest+commander@h1"], "fixer": ["fixer@h2"]}


def test_the_database_pool_is_sized_from_the_worker_pool():
    from erdu_tasks.cli.main import db_pool_size

    settings = Settings()
    shared = worker_argv(["ingest", "commander"], settings)
    assert db_pool_size(shared) == int(shared[shared.index("-c") + 1]) + 1   # a thread each, and one more
    assert db_pool_size(worker_argv(["fixer"], settings, pool="prefork", concurrency=3)) == 2
    assert db_pool_size(worker_argv(["fixer"], settings, pool="threads", concurrency=6)) == 7


def test_the_worker_is_started_with_the_options_of_its_argv_and_an_unknown_option_is_refused():
    from erdu_tasks.celery_ext.start import worker_options

    argv = worker_argv(["fixer"], Settings(), hostname="host-a", loglevel="DEBUG")
    options = worker_options(argv)
    assert options == {"queues": "fixer", "hostname": "fixer@host-a", "concurrency": 2, "pool_cls": "prefork",
                       "prefetch_multiplier": 1, "task_events": True, "without_gossip": True,
                       "without_mingle": True, "loglevel": "DEBUG", "max_tasks_per_child": 200,
                       "max_memory_per_child": 300_000}
    shared = worker_options(worker_argv(["ingest", "commander"], Settings()))
    assert (shared["queues"], shared["pool_cls"], shared["hostname"]) == ("ingest,commander", "threads",
                                                                         "ingest+commander@%h")
    for bad in (["worker", "--autoscale", "4,2"], ["worker", "-c"]):
        with pytest.raises(ValueError):
            worker_options(bad)
