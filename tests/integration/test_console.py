"""The web console without a browser: sign-in, roles, CSRF, escaping, the silence preview, learning and charts.

One app (TestClient, real Postgres and Redis) for the module; each test makes the incidents it needs.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient

from erdu_tasks.api.app import create_app
from erdu_tasks.escalation import silences
from erdu_tasks.ingest.accept import accept
from erdu_tasks.model import Event
from erdu_tasks.runtime import Runtime
from erdu_tasks.settings import load_settings
from erdu_tasks.store import incidents as store
from erdu_tasks.store import stats
from tests.conftest import create_database, drop_database_later, free_port

pytestmark = pytest.mark.xdist_group("console")

PEOPLE = {"alice": {"role": "responder", "token": "alice-token-1"},
          "bob": {"role": "admin", "token": "bob-token-1"},
          "vera": {"role": "viewer", "token": "vera-token-1"}}
FLOWER_PORT = free_port()
HOSTILE = "Boom <script>alert(1)</script> <img src=x onerror=alert(2)> \x1b[31mred\x1b[0m \u202eevil"


def settings_for(database_url: str, redis_url: str, **extra):
    # Flower on a port where nothing listens: the incident page says Flower did not answer (no other Flower asked).
    return load_settings(database_url=database_url, redis_url=redis_url, api_token="console-write-token",
                         api_read_token="console-read-token", people=PEOPLE, flower={"port": FLOWER_PORT}, **extra)


@pytest.fixture(scope="module")
def setup(redis_server, tmp_path_factory):
    url = create_database()
    settings = settings_for(url, redis_server.url, reports_dir=str(tmp_path_factory.mktemp("reports")))
    rt = Runtime(settings)
    with TestClient(create_app(settings)) as client:
        yield client, rt, settings
    rt.db.close()
    drop_database_later(url)


def ingest(rt: Runtime, message: str, service: str, **fields) -> str:
    [outcome] = accept(rt.db, [Event(message=message, service=service, **fields)], rt).outcomes
    return outcome.incident_id


def sign_in(client: TestClient, token: str) -> str:
    """Sign in with a token; returns the page's CSRF token."""
    client.cookies.clear()
    page = client.get("/login")
    login_csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    done = client.post("/login", data={"token": token, "csrf": login_csrf, "next": "/incidents"},
                       follow_redirects=False)
    assert done.status_code == 303, done.text
    return csrf_of(client.get("/incidents").text)


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def row(rt: Runtime, sql: str, *params):
    with rt.db.transaction() as conn:
        return conn.execute(sql, params).fetchone()


def test_it_signs_in_with_a_token_into_a_signed_httponly_strict_cookie(setup):
    client, _, _ = setup
    client.cookies.clear()
    assert client.get("/incidents", follow_redirects=False).headers["location"].startswith("/login?next=")
    page = client.get("/login")
    login_csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    wrong = client.post("/login", data={"token": "not-a-token", "csrf": login_csrf})
    assert wrong.status_code == 401 and "that token is not known" in wrong.text
    done = client.post("/login", data={"token": "alice-token-1", "csrf": login_csrf}, follow_redirects=False)
    cookie = done.headers["set-cookie"]
    assert "erdu_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    listing = client.get("/incidents")
    assert listing.status_code == 200 and 'id="signed-in"' in listing.text and "alice" in listing.text
    assert "script-src 'self'" in listing.headers["content-security-policy"]
    # A cookie altered by one character is refused.
    value = client.cookies.get("erdu_session")
    client.cookies.set("erdu_session", value[:-2] + ("A" if value[-2] != "A" else "B") + value[-1])
    assert client.get("/incidents", follow_redirects=False).status_code == 303


def test_a_sign_in_without_the_forms_token_or_with_a_bad_body_or_target_is_refused(setup):
    client, _, _ = setup
    client.cookies.clear()
    refused = client.post("/login", data={"token": "bob-token-1"}, follow_redirects=False)
    assert refused.status_code == 303 and "expired" in refused.headers["location"]
    assert "erdu_session" not in refused.headers.get("set-cookie", "")
    garbled = client.post("/login", content=b"token=%ff%fe&csrf=x",
                          headers={"content-type": "application/x-www-form-urlencoded"})
    assert garbled.status_code == 400 and "form body refused" in garbled.json()["detail"]
    nul = client.post("/login", content=b"token=a%00b", headers={"content-type": "application/x-www-form-urlencoded"})
    assert nul.status_code == 400 and "NUL" in nul.json()["detail"]
    login_csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)
    away = client.post("/login", data={"token": "bob-token-1", "csrf": login_csrf, "next": "//evil.example/x"},
                       follow_redirects=False)
    assert away.status_code == 303 and away.headers["location"] == "/incidents"   # never off-site


def test_a_viewer_reads_but_cannot_act_and_a_responder_acks_as_herself(setup):
    client, rt, _ = setup
    incident_id = ingest(rt, "Payment gateway timed out after 30s", "payments")
    csrf = sign_in(client, "vera-token-1")
    page = client.get(f"/incidents/{incident_id}")
    assert page.status_code == 200 and "acting on incidents needs the responder role" in page.text
    assert "Flower did not answer (ConnectError)" in page.text
    refused = client.post(f"/incidents/{incident_id}/ack", data={"csrf": csrf})
    assert refused.status_code == 403 and "vera is a viewer" in refused.text
    assert row(rt, "SELECT acknowledged_at FROM incidents WHERE id = %s", incident_id)["acknowledged_at"] is None

    csrf = sign_in(client, "alice-token-1")
    no_csrf = client.post(f"/incidents/{incident_id}/ack", data={"note": "x"})
    assert no_csrf.status_code == 403 and "CSRF" in no_csrf.text
    assert row(rt, "SELECT acknowledged_at FROM incidents WHERE id = %s", incident_id)["acknowledged_at"] is None
    done = client.post(f"/incidents/{incident_id}/ack", data={"csrf": csrf, "note": "looking"}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == f"/incidents/{incident_id}"
    assert f"{incident_id} acknowledged by alice" in client.get(done.headers["location"]).text   # shown once
    assert "acknowledged by alice</p>" not in client.get(done.headers["location"]).text
    assert row(rt, "SELECT acknowledged_at FROM incidents WHERE id = %s", incident_id)["acknowledged_at"] is not None
    with rt.db.transaction() as conn:
        actors = [r["actor"] for r in conn.execute(
            "SELECT actor FROM incident_timeline WHERE incident_id = %s ORDER BY id", (incident_id,))]
    assert actors[-2:] == ["person:alice", "person:alice"]   # the ack, then her note

    silence = client.post("/silences", data={"csrf": csrf, "matchers": "service=payments", "comment": "x"})
    assert silence.status_code == 403 and "needs the admin role" in silence.text
    assert row(rt, "SELECT count(*) AS n FROM silences")["n"] == 0


def test_hostile_event_text_renders_as_inert_text(setup):
    client, rt, _ = setup
    incident_id = ingest(rt, HOSTILE, "frontend", labels={"x": "<b>bold</b>"})
    sign_in(client, "console-read-token")
    for page in (client.get("/incidents?status=all"), client.get("/incidents/rows?status=all"),
                 client.get(f"/incidents/{incident_id}")):
        assert page.status_code == 200
        html = page.text
        assert "<script>alert" not in html and "<img src=x" not in html and "<b>bold" not in html
        assert "Boom &lt;script&gt;alert" in html and "&lt;img src=" in html   # the title (a template)
        assert "\x1b" not in html and "\u202e" not in html
        assert "\\x1b[" in html and "\\u202eevil" in html
    # The incident page also shows the first occurrence whole.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text and "\\x1b[31mred" in page.text


def test_the_silence_preview_counts_what_the_silence_will_hold(setup):
    client, rt, _ = setup
    ids = [ingest(rt, f"Cache node {n} unreachable: connection refused on shard {n}x", "cache-preview",
                  dedup_key=f"cache-{n}") for n in range(3)]
    ingest(rt, "Unrelated failure in billing", "billing-preview")
    with rt.db.transaction() as conn:
        conn.execute("UPDATE incidents SET status = 'closed' WHERE id = %s", (ids[0],))
    csrf = sign_in(client, "bob-token-1")
    preview = client.get("/silences/preview", params={"matchers": "service=cache-preview"}).json()
    assert preview["matched"] == 2 and sorted(preview["sample"]) == sorted(ids[1:])
    bad = client.get("/silences/preview", params={"matchers": "nonsense"})
    assert bad.status_code == 400 and "not name=value" in bad.json()["error"]
    done = client.post("/silences", data={"csrf": csrf, "matchers": "service=cache-preview", "duration": "30m",
                                          "comment": "cache maintenance", "back": "/silences"},
                       follow_redirects=False)
    assert done.status_code == 303 and "added by bob" in client.get(done.headers["location"]).text
    with rt.db.transaction() as conn:
        [stored] = silences.list_silences(conn, now=datetime.now(timezone.utc))
        held = [i for i in ids[1:] if stored.matches(store.get_incident(conn, i))]
    assert stored.author == "bob" and len(held) == preview["matched"]


def test_the_list_sorts_by_severity_then_longest_waiting_and_filters_by_service(setup):
    client, rt, _ = setup
    low = ingest(rt, "Slow page render on /reports", "sorting", severity="P4", dedup_key="sort-low")
    first_p1 = ingest(rt, "Orders database down", "sorting", severity="P1", dedup_key="sort-p1-a")
    second_p1 = ingest(rt, "Orders replica down", "sorting", severity="P1", dedup_key="sort-p1-b")
    sign_in(client, "vera-token-1")

    def order(query: str) -> list[str]:
        html = client.get("/incidents/rows?" + query).text
        return [i for i in re.findall(r'data-id="([^"]+)"', html) if i in (low, first_p1, second_p1)]

    assert order("service=sorting&sort=severity") == [first_p1, second_p1, low]
    assert order("service=sorting&sort=newest") == [second_p1, first_p1, low]
    assert order("service=sorting&sort=oldest") == [low, first_p1, second_p1]
    assert order("service=sorting&severity=P4") == [low]
    assert order("service=elsewhere") == []


def test_the_filters_refuse_unknown_values_naming_the_allowed_ones(setup):
    client, _, _ = setup
    sign_in(client, "vera-token-1")
    bad = client.get("/incidents?severity=p1")
    assert bad.status_code == 400 and "P1, P2, P3, P4, P5" in bad.text
    assert "detected" in client.get("/incidents?status=bogus").text


def test_charts_and_learning_pages_show_the_stored_figures(setup):
    client, rt, _ = setup
    incident_id = ingest(rt, "Disk full on /var/lib/charts", "charts-svc")
    with rt.db.transaction() as conn:
        conn.execute("UPDATE incidents SET acknowledged_at = created_at + interval '120 seconds',"
                     " resolved_at = created_at + interval '600 seconds', status = 'resolved' WHERE id = %s",
                     (incident_id,))
    sign_in(client, "vera-token-1")
    charts = client.get("/charts?range=24h")
    assert charts.status_code == 200 and charts.text.count("<svg") == 3
    with rt.db.transaction() as conn:
        [bucket] = [r for r in stats.over_time(conn, since=datetime.now(timezone.utc) - timedelta(hours=1),
                                               bucket="hour") if r.resolved]
    assert bucket.resolved == 1 and bucket.mttr == pytest.approx(600)
    assert re.search(r"<title>[0-9:]+: 10\.0 min over 1 resolved</title>", charts.text), charts.text[-3000:]
    assert re.search(rf"<title>[0-9:]+: {bucket.mtta / 60:.1f} min over {bucket.acknowledged} acknowledged</title>",
                     charts.text)
    learning = client.get("/runbooks")
    assert learning.status_code == 200 and "Disk full on" in learning.text
    assert "no: no fix has run on this pattern yet" in learning.text


def test_a_changed_token_ends_its_sessions(setup, redis_server):
    client, _, settings = setup
    sign_in(client, "alice-token-1")
    cookie = client.cookies.get("erdu_session")
    rotated = settings_for(settings.database_url, redis_server.url,
                           ).model_copy(update={"people": {**settings.people, "alice": settings.people["alice"]
                                                          .model_copy(update={"token": "alice-token-2"})}})
    with TestClient(create_app(rotated)) as other:
        other.cookies.set("erdu_session", cookie)
        assert other.get("/incidents", follow_redirects=False).status_code == 303
    with TestClient(create_app(settings)) as same:
        same.cookies.set("erdu_session", cookie)   # another process of the same settings: the key is shared
        assert same.get("/incidents").status_code == 200


def test_an_escalated_incident_shows_what_we_know_so_far(setup):
    client, rt, _ = setup
    incident_id = ingest(rt, "Ledger export stalled: queue depth 9000", "ledger")
    sign_in(client, "vera-token-1")
    assert "No report yet (status detected)" in client.get(f"/incidents/{incident_id}").text
    with rt.db.transaction() as conn:
        conn.execute("UPDATE incidents SET status = 'escalated', escalated_at = now() WHERE id = %s", (incident_id,))
    page = client.get(f"/incidents/{incident_id}").text
    assert 'id="report-interim"' in page and f"# {incident_id}" in page

