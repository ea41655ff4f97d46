"""The console in a real browser: Debian's Chromium, headless, driven by Playwright (never a downloaded browser).

One API process (`erdu api`, real Postgres and Redis) and one browser for the module. A person signs in,
sees a new incident appear without reloading, opens it, acknowledges it (checked in the database),
silences its service after reading the preview count, retries a failed task, and /docs loads with every
request beyond localhost aborted. Screenshots of the list and of the incident page are saved to
$ERDU_TEST_ARTIFACTS (default var/test-artifacts/).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from erdu_tasks.ingest.accept import accept
from erdu_tasks.model import Event
from erdu_tasks.runtime import Runtime
from erdu_tasks.settings import load_settings
from erdu_tasks.store import incidents as store
from tests.conftest import ROOT, create_database, drop_database_later, free_port, wait_for

pytestmark = pytest.mark.xdist_group("console-browser")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PEOPLE = {"alice": {"role": "responder", "token": "alice-browser-token"},
          "bob": {"role": "admin", "token": "bob-browser-token"}}
HOSTILE = "Checkout failed <img src=x onerror=alert(1)><script>alert(2)</script> \x1b[2J for order 4411"
ARTIFACTS = Path(os.environ.get("ERDU_TEST_ARTIFACTS") or ROOT / "var" / "test-artifacts")

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is not installed (Debian package chromium; `make test` installs it)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def console(redis_server, tmp_path_factory):
    """The API as `erdu api` serves it, and a runtime on the same database for the test's own writes."""
    tmp = tmp_path_factory.mktemp("console-browser")
    url = create_database()
    port = free_port()
    env = {**os.environ, "ERDU_DATABASE_URL": url, "ERDU_REDIS_URL": redis_server.url,
           "ERDU_API_TOKEN": "browser-write-token", "ERDU_PEOPLE": json.dumps(PEOPLE),
           "ERDU_FLOWER__PORT": str(free_port()),   # nothing listens: no other Flower is asked
           "ERDU_REPORTS_DIR": str(tmp / "reports"), "ERDU_ALERTS_DIR": str(tmp / "alerts"), "PYTHONUNBUFFERED": "1"}
    env.pop("ERDU_CONFIG", None)
    log = open(tmp / "api.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "erdu_tasks.cli", "api", "--port", str(port), "--log-level",
                             "warning"], env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, (tmp / "api.log").read_text()[-3000:]
        try:
            return httpx.get(base + "/healthz", timeout=1).status_code < 500
        except httpx.HTTPError:
            return False

    rt = Runtime(load_settings(database_url=url, redis_url=redis_server.url))
    try:
        wait_for(up, 90, 0.1, what="the API answering")
        yield base, rt
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
        rt.db.close()
        drop_database_later(url)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


def sign_in(page, base: str, token: str) -> None:
    page.goto(base + "/incidents")
    assert "/login" in page.url
    page.fill("#token", token)
    page.click("#sign-in")
    page.wait_for_url(base + "/incidents")


def ingest(rt: Runtime, message: str, service: str, **fields) -> str:
    [outcome] = accept(rt.db, [Event(message=message, service=service, **fields)], rt).outcomes
    return outcome.incident_id


def one(rt: Runtime, sql: str, *params):
    with rt.db.transaction() as conn:
        return conn.execute(sql, params).fetchone()


@pytest.mark.slow(25)
def test_an_on_call_shift_in_the_browser(console, browser):
    """One test, so that however the suite is spread over workers the module starts one API and one browser.

    Each step has a fresh browser context (its own cookies) and says what it checks."""
    base, rt = console
    steps = (a_new_incident_appears_live_and_is_acknowledged_from_its_page,
             an_admin_silences_the_service_after_reading_the_preview_count,
             a_failed_task_is_retried_from_the_failed_tasks_page,
             the_api_docs_load_with_the_network_blocked)
    for step in steps:
        context = browser.new_context(viewport={"width": 1360, "height": 900})
        page = context.new_page()
        page.dialogs = []
        page.on("dialog", lambda d, page=page: (page.dialogs.append(d.message), d.dismiss()))
        try:
            step(base, rt, page)
        finally:
            context.close()


def a_new_incident_appears_live_and_is_acknowledged_from_its_page(base, rt, page):
    sign_in(page, base, "alice-browser-token")
    page.wait_for_selector("#live.on")           # the event stream is connected
    page.evaluate("window.sameDocument = 'not reloaded'")
    incident_id = ingest(rt, HOSTILE, "checkout")
    row = page.wait_for_selector(f'tr[data-id="{incident_id}"]', timeout=15_000)
    assert page.evaluate("window.sameDocument") == "not reloaded"
    assert "<img src=" in row.inner_text()       # shown as text ...
    assert page.locator("#incidents img").count() == 0 and page.dialogs == []   # ... never run
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "console-incident-list.png"), full_page=True)

    page.click(f'tr[data-id="{incident_id}"] a')
    page.wait_for_url(f"{base}/incidents/{incident_id}")
    assert "<script>alert(2)</script>" in page.inner_text("#description")
    assert "\\x1b[2J" in page.inner_text("#description") and page.dialogs == []
    page.fill("#ack-form input[name=note]", "on it")
    page.click("#ack")
    assert "acknowledged by alice" in page.inner_text("#flash")
    page.screenshot(path=str(ARTIFACTS / "console-incident-page.png"), full_page=True)
    assert one(rt, "SELECT acknowledged_at FROM incidents WHERE id = %s", incident_id)["acknowledged_at"]
    last = one(rt, "SELECT actor, what FROM incident_timeline WHERE incident_id = %s ORDER BY id DESC LIMIT 1",
               incident_id)
    assert last == {"actor": "person:alice", "what": "note by alice (ack): on it"}


def an_admin_silences_the_service_after_reading_the_preview_count(base, rt, page):
    ids = [ingest(rt, f"Inventory sync failed for warehouse {n}", "inventory", dedup_key=f"inv-{n}")
           for n in range(3)]
    with rt.db.transaction() as conn:
        conn.execute("UPDATE incidents SET status = 'closed' WHERE id = %s", (ids[2],))
        expected = conn.execute("SELECT count(*) AS n FROM incidents WHERE status NOT IN ('resolved', 'closed')"
                                " AND (service = 'inventory' OR affected_services ? 'inventory')").fetchone()["n"]
    sign_in(page, base, "bob-browser-token")
    page.goto(f"{base}/incidents/{ids[0]}")
    assert page.input_value("#silence-matchers") == "service=inventory"
    preview = page.wait_for_selector("#silence-preview[data-count]")
    assert int(preview.get_attribute("data-count")) == expected == 2
    page.fill("#silence-matchers", "service=inventory\nseverity=P1")   # the preview follows the matchers
    page.wait_for_selector('#silence-preview[data-count="0"]')
    page.fill("#silence-matchers", "service=inventory")
    page.wait_for_selector('#silence-preview[data-count="2"]')
    page.fill("#silence-comment", "warehouse API migration")
    page.fill("#silence-duration", "2h")
    page.click("#silence-submit")
    assert "added by bob" in page.inner_text("#flash")
    silence = one(rt, "SELECT author, matchers, comment FROM silences")
    assert silence == {"author": "bob", "comment": "warehouse API migration",
                       "matchers": [{"name": "service", "op": "=", "value": "inventory"}]}


def a_failed_task_is_retried_from_the_failed_tasks_page(base, rt, page):
    incident_id = ingest(rt, "Refund worker crashed: KeyError 'amount'", "refunds")
    with rt.db.transaction() as conn:
        conn.execute("UPDATE incidents SET status = 'escalated', escalated_at = now() WHERE id = %s", (incident_id,))
        store.record_failed_task(conn, task_id="5f0c8a51-task", task_name="erdu.fix", stage="fix",
                                 incident_id=incident_id, error="TransientError: retries exhausted",
                                 worker="celery@fixer-1")
        failed_id = conn.execute("SELECT max(id) AS id FROM failed_tasks").fetchone()["id"]
    sign_in(page, base, "alice-browser-token")
    page.goto(base + "/failed")
    page.click(f'tr[data-id="{failed_id}"] button.retry-failed')
    assert f"{incident_id} re-driven from fix by alice" in page.inner_text("#flash")
    assert one(rt, "SELECT retried_at FROM failed_tasks WHERE id = %s", failed_id)["retried_at"] is not None
    assert one(rt, "SELECT status FROM incidents WHERE id = %s", incident_id)["status"] != "escalated"
    assert one(rt, "SELECT actor FROM incident_timeline WHERE incident_id = %s AND what LIKE 'retry from fix%%'",
               incident_id)["actor"] == "person:alice"
    assert page.locator(f'tr[data-id="{failed_id}"]').count() == 0   # off the open list


def the_api_docs_load_with_the_network_blocked(base, rt, page):
    blocked = []

    def only_localhost(route):
        host = urlparse(route.request.url).hostname
        if host in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    page.context.route("**/*", only_localhost)
    page.goto(base + "/docs")
    title = page.wait_for_selector(".swagger-ui .info .title", timeout=15_000)
    assert "ERDU" in title.inner_text()
    assert page.locator(".opblock").count() > 5 and blocked == []
