"""`erdu flower`: the role queues and an incident's tasks in Flower's HTTP API, behind basic auth."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import httpx
import pytest

from erdu_tasks.devstack.flower import flower_options
from erdu_tasks.errors import ConfigError
from tests.conftest import free_port, incident_rows, wait_for

RUNBOOK = textwrap.dedent("""
    runbooks:
      - name: restart-ledger-pool
        match: {service: ledger}
        actions:
          - action: noop
        validation: {check: noop}
        limits: {max_runs: 100, per_seconds: 3600}
""")
ROLE_QUEUES = {"ingest", "monitor", "commander", "diagnostician", "fixer", "resolver"}
AUTH = ("ops", "s3cret-pass")


@pytest.fixture()
def stack(stack_factory, tmp_path):
    runbooks = tmp_path / "runbooks"
    runbooks.mkdir()
    (runbooks / "ledger.yaml").write_text(RUNBOOK)
    return stack_factory({"ERDU_RUNBOOKS_DIR": str(runbooks), "ERDU_FLOWER__USER": AUTH[0],
                          "ERDU_FLOWER__PASSWORD": AUTH[1]})


@pytest.fixture()
def flower(stack):
    proc, base = _start_flower(stack, stack.env, "flower.log")
    yield base
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(20)
    assert AUTH[1] not in " ".join(proc.args), "the password must not be on the command line"


def test_flower_lists_the_role_queues_and_an_incidents_tasks_with_auth_and_refuses_without(stack, flower):
    stack.start_all()
    time.sleep(1.0)  # Flower's event receiver is connected a moment after its HTTP port
    stack.send_event({"message": "Ledger write failed: connection reset", "service": "ledger"})
    incident = wait_for(lambda: incident_rows(stack.database_url), 30, what="an incident")[0]
    wait_for(lambda: incident_rows(stack.database_url, "SELECT status FROM incidents WHERE id = %s",
                                   (incident["id"],))[0]["status"] == "closed", 60, what="closed")

    def stage_tasks():
        tasks = httpx.get(f"{flower}/api/tasks", auth=AUTH, timeout=10).json()
        mine = {t["name"]: t for t in tasks.values() if incident["id"] in str(t.get("args"))}
        return mine if {"erdu.assess", "erdu.diagnose", "erdu.fix", "erdu.resolve"} <= set(mine) else None

    mine = wait_for(stage_tasks, 30, 0.5, what="the incident's stage tasks in Flower")
    assert mine["erdu.fix"]["state"] == "SUCCESS"
    assert "fixer" in mine["erdu.fix"]["worker"].split("@")[0].split("+")
    assert mine["erdu.assess"]["routing_key"] == "commander"
    assert mine["erdu.diagnose"]["routing_key"] == "diagnostician"

    queues = httpx.get(f"{flower}/api/queues/length", auth=AUTH, timeout=10).json()
    assert ROLE_QUEUES <= {q["name"] for q in queues["active_queues"]}

    # The Tasks page shows each task's incident (its args column), the Broker page every role queue even
    # after one worker's page was opened (Flower then knows that worker's queues only).
    tasks_page = httpx.get(f"{flower}/tasks", auth=AUTH, timeout=10).text
    assert ">args<" in tasks_page.replace(" ", ""), "no args column on the Tasks page"
    fixer_worker = mine["erdu.fix"]["worker"]
    assert httpx.get(f"{flower}/worker/{fixer_worker}", auth=AUTH, timeout=20).status_code == 200
    broker_page = httpx.get(f"{flower}/broker", auth=AUTH, timeout=20).text
    listed = httpx.get(f"{flower}/api/queues/length", auth=AUTH, timeout=10).json()
    assert ROLE_QUEUES <= {q["name"] for q in listed["active_queues"]}
    for queue in ROLE_QUEUES:
        assert f">{queue}<" in broker_page.replace(" ", "").replace("\n", ""), queue

    for url in (f"{flower}/api/tasks", f"{flower}/api/queues/length", f"{flower}/tasks", f"{flower}/",
                f"{flower}/metrics"):
        assert httpx.get(url, timeout=10).status_code == 401, url
        assert httpx.get(url, auth=(AUTH[0], "wrong"), timeout=10).status_code == 401, url
    metrics = httpx.get(f"{flower}/metrics", auth=AUTH, timeout=10)
    assert metrics.status_code == 200 and "flower_events_total" in metrics.text
    assert AUTH[1] not in metrics.text


def _start_flower(stack, env, log_name):
    port = free_port()
    log_path = stack.tmp / log_name
    proc = subprocess.Popen([sys.executable, "-m", "erdu_tasks.cli", "flower", "--port", str(port)], env=env,
                            cwd=stack.tmp, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, log_path.read_text()
        try:
            return httpx.get(f"{base}/healthcheck", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, 60, 0.3, what="flower to answer")
    return proc, base


def test_flower_without_auth_serves_no_metrics(stack):
    env = {k: v for k, v in stack.env.items() if not k.startswith("ERDU_FLOWER__")}
    proc, base = _start_flower(stack, env, "flower-noauth.log")
    try:
        assert httpx.get(f"{base}/metrics", timeout=10).status_code == 404
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)


def test_flower_refuses_to_listen_beyond_localhost_without_auth(stack):
    env = {k: v for k, v in stack.env.items() if not k.startswith("ERDU_FLOWER__")}
    done = subprocess.run([sys.executable, "-m", "erdu_tasks.cli", "flower", "--address", "0.0.0.0",
                           "--port", str(free_port())], env=env, cwd=stack.tmp, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "refusing to run Flower on 0.0.0.0 without authentication" in done.stderr
    for address in ("::", "192.0.2.10", "flower.example.com"):   # any address but loopback
        with pytest.raises(ConfigError, match="without authentication"):
            flower_options({}, address=address)
    assert flower_options({}, address="::1").address == "::1"


@pytest.mark.parametrize("variable", ["FLOWER_UNAUTHENTICATED_API", "FLOWER_AUTH"])
def test_flower_refuses_a_setting_that_would_open_its_api_past_basic_auth(stack, variable):
    done = subprocess.run([sys.executable, "-m", "erdu_tasks.cli", "flower", "--port", str(free_port())],
                          env={**stack.env, variable: "true"}, cwd=stack.tmp, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert f"refusing to run Flower with {variable} set" in done.stderr
