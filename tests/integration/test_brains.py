"""The LLM brain against a local fake OpenAI-compatible endpoint: a valid answer is used; malformed JSON,
a timeout, an HTTP error and an out-of-schema answer each fall back to the rules, with the reason on the
incident's timeline."""

from __future__ import annotations

import json
import re
import textwrap
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from erdu_tasks.brains import BrainConfig, build_brains
from erdu_tasks.model import Incident, Severity, Status
from erdu_tasks.roles.commander import CommanderContext, RunbookRecord
from erdu_tasks.roles.diagnostician import DiagnosticianContext
from erdu_tasks.roles.resolver import ResolverContext
from tests.conftest import incident_rows, wait_for

VALID = {
    "commander": {"severity": "P2", "decision": "automate", "reasons": ["fake model: customers notice this"]},
    "diagnostician": {"root_cause": "fake model: the brain-check widget leaked its file handles",
                      "confidence": 0.77, "evidence": ["fake model read the log lines"], "skill_gaps": []},
    "resolver": {"summary": "Fake model summary: the brain-check widget was restarted and stayed healthy.",
                 "impact": {"business": "none", "technical": "one widget", "user": "none"},
                 "lessons_learned": ["fake model lesson"], "follow_ups": ["fake model follow-up"]},
}
OUT_OF_SCHEMA = {
    "commander": {**VALID["commander"], "severity": "P0"},
    "diagnostician": {**VALID["diagnostician"], "confidence": 7},
    "resolver": {k: v for k, v in VALID["resolver"].items() if k != "impact"},
}


def data_of(body: dict) -> dict:
    """The untrusted JSON block of a chat request, found by the markers the system prompt names."""
    system, user = body["messages"][0]["content"], body["messages"][1]["content"]
    begin = re.search(r"\u27e6BEGIN UNTRUSTED DATA [0-9a-f]+\u27e7", system).group(0)
    end = begin.replace("BEGIN", "END")
    assert user.count(begin) == 1 and user.count(end) == 1
    return json.loads(user.split(begin, 1)[1].split(end, 1)[0])


class FakeLLM:
    """A chat-completions endpoint whose behaviour is chosen by a keyword in the incident title."""

    def __init__(self, slow_seconds: float = 2.5) -> None:
        self.requests: list[dict] = []
        self.slow_seconds = slow_seconds
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                status, content = fake.answer(body)
                payload = json.dumps({"id": "x", "object": "chat.completion", "model": body.get("model"),
                                      "choices": [{"index": 0, "finish_reason": "stop",
                                                   "message": {"role": "assistant", "content": content}}]})
                if status != 200:
                    payload = json.dumps({"error": {"message": "overloaded"}})
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload.encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass   # the client gave up (timeout case)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def answer(self, body: dict) -> tuple[int, str]:
        system = body["messages"][0]["content"]
        user = data_of(body)["incident"]["description"]   # this incident only
        role = next(r for r in ("commander", "diagnostician", "resolver") if f"You are the {r}" in system)
        if "malformed-case" in user:
            return 200, '{"severity": "P2", "decision": '
        if "badsev-case" in user:
            return 200, json.dumps(OUT_OF_SCHEMA[role])
        if "http500-case" in user:
            return 500, ""
        if "slow-case" in user:
            time.sleep(self.slow_seconds)
        text = json.dumps(VALID[role])
        return 200, f"```json\n{text}\n```" if role == "diagnostician" else text

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def fake_llm():
    fake = FakeLLM()
    yield fake
    fake.close()


def incident(title: str) -> Incident:
    return Incident(id="INC-20250611100000-0000abcd", fingerprint="fp", title=title, description=title,
                    severity=Severity.P3, status=Status.DETECTED, source="test", service="widgets",
                    affected_services=["widgets"], created_at=datetime.now(timezone.utc))


@pytest.mark.parametrize("case, reason", [
    ("valid-case", None),
    ("malformed-case", "malformed JSON"),
    ("slow-case", "timeout: no answer within 1 s"),
    ("badsev-case", "answer does not fit the"),
    ("http500-case", "HTTP 500"),
])
def test_each_role_uses_a_valid_answer_and_falls_back_to_the_rules_otherwise(fake_llm, case, reason):
    brains = build_brains(BrainConfig(base_url=fake_llm.base_url, model="fake-1", api_key="sk-test", timeout=1))
    inc = incident(f"Brain check {case} on node 3")
    now = datetime.now(timezone.utc)
    started = time.monotonic()
    thoughts = {
        "commander": brains.commander.assess(inc, CommanderContext(now=now, runbooks=[RunbookRecord("rb")])),
        "diagnostician": brains.diagnostician.diagnose(inc, DiagnosticianContext()),
        "resolver": brains.resolver.resolve(inc, ResolverContext(now=now)),
    }
    if case == "slow-case":
        assert time.monotonic() - started < 3 * 1 + 2    # three roles, each gave up after about a second
    for role, thought in thoughts.items():
        if reason is None:
            assert (thought.brain, thought.model, thought.fallback) == ("llm", "fake-1", None), role
        else:
            assert thought.brain == "rules" and reason in thought.fallback, (role, thought.fallback)
    if reason is None:
        assert thoughts["commander"].value.severity is Severity.P2
        assert "model's advice: fake model: customers notice this" in thoughts["commander"].value.reasons
        # Fenced JSON accepted; the rules know no cause here, so the model's is a hypothesis, not the root cause.
        diagnosis = thoughts["diagnostician"].value
        assert "cause not yet known" in diagnosis.root_cause and not diagnosis.established
        assert diagnosis.alternatives[0]["cause"] == "model's advice: " + VALID["diagnostician"]["root_cause"]
        assert diagnosis.alternatives[0]["confidence"] == 0.77
        assert thoughts["resolver"].value.summary.startswith("Fake model summary")
    else:
        assert thoughts["commander"].value.severity is Severity.P3                 # the rules' answer
        if case == "badsev-case":
            assert "severity" in thoughts["commander"].fallback and "P0" not in str(thoughts["commander"].value)
        assert "cause not yet known" in thoughts["diagnostician"].value.root_cause
    request = fake_llm.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-test"
    assert request["body"]["model"] == "fake-1" and request["body"]["response_format"] == {"type": "json_object"}
    assert "rule_based_proposal" in request["body"]["messages"][1]["content"]


def test_an_unreachable_endpoint_falls_back_quickly():
    brains = build_brains(BrainConfig(base_url="http://127.0.0.1:9/v1", model="m", timeout=2))
    thought = brains.commander.assess(incident("x"), CommanderContext(now=datetime.now(timezone.utc)))
    assert thought.brain == "rules" and "cannot reach" in thought.fallback


RUNBOOK = textwrap.dedent("""
    runbooks:
      - name: restart-brain-check
        match: {title_pattern: "(?i)brain check"}
        diagnosis_hint: The brain-check widget hangs after a while.
        actions: [{action: noop, params: {message: "widget restarted"}}]
        validation: {check: noop}
        limits: {max_runs: 1000, per_seconds: 3600}
""")


def test_the_pipeline_records_the_brain_and_every_fallback_reason_on_the_timeline(stack_factory, fake_llm,
                                                                                   tmp_path):
    fake_llm.slow_seconds = 10.0   # workers on a busy machine get 5 s; the slow case takes longer
    (tmp_path / "runbooks").mkdir()
    (tmp_path / "runbooks" / "rb.yaml").write_text(RUNBOOK)
    stack = stack_factory({
        "ERDU_RUNBOOKS_DIR": str(tmp_path / "runbooks"),
        "ERDU_BRAIN": json.dumps({"base_url": fake_llm.base_url, "model": "fake-1", "api_key": "sk-test",
                                  "timeout": 5}),
    })
    stack.start_all()
    cases = ["valid-case", "malformed-case", "slow-case", "badsev-case"]
    for case in cases:
        stack.send_event({"message": f"Brain check {case} failed on node 3", "service": "widgets"})

    def closed():
        rows = incident_rows(stack.database_url, "SELECT * FROM incidents WHERE status = 'closed'")
        return rows if len(rows) == len(cases) else None

    rows = {next(c for c in cases if c in r["description"]): r for r in wait_for(closed, 90, what="four closed")}

    def notes(row):
        return [t["what"] for t in incident_rows(stack.database_url, "SELECT what FROM incident_timeline"
                                                 " WHERE incident_id = %s ORDER BY id", (row["id"],))
                if "LLM brain not used" in t["what"]]

    valid = rows["valid-case"]
    assert valid["severity"] == "P2" and valid["assessment"]["brain"]["name"] == "llm"
    assert "model's advice: fake model: customers notice this" in valid["assessment"]["reasons"]
    assert valid["root_cause"].startswith("fake model") and valid["diagnosis"]["brain"]["model"] == "fake-1"
    assert valid["lessons_learned"] == ["fake model lesson"] and notes(valid) == []
    md = (stack.reports / f"{valid['id']}.md").read_text()
    assert "Fake model summary" in md and "by the llm brain" in md

    for case, reason in (("malformed-case", "malformed JSON"), ("slow-case", "timeout: no answer within 5 s"),
                         ("badsev-case", "answer does not fit the")):
        row = rows[case]
        found = notes(row)
        assert len(found) == 3, (case, found)   # commander, diagnostician and resolver each fell back
        assert all(reason in what and what.endswith("decided by the rules") for what in found), found
        assert row["assessment"]["brain"]["name"] == "rules" and reason in row["assessment"]["brain"]["fallback"]
        assert row["severity"] == "P3" and row["root_cause"] == "The brain-check widget hangs after a while."
    assert "severity" in rows["badsev-case"]["assessment"]["brain"]["fallback"]
    assert "confidence" in rows["badsev-case"]["diagnosis"]["brain"]["fallback"]


@pytest.mark.parametrize("env, needle", [
    ({"ERDU_BRAIN": json.dumps({"enabled": True})}, "needs base_url and model"),
    ({"ERDU_COMMANDER": json.dumps({"business_hours": {"timezone": "Mars/Base"}})}, "unknown timezone"),
    ({"ERDU_LEARNING": json.dumps({"auto_resolve_min_samples": 0})}, "auto_resolve_min_samples"),
])
def test_a_worker_refuses_to_start_with_bad_role_settings(stack_factory, env, needle):
    stack = stack_factory(env)
    result = stack.erdu("worker", "commander")
    assert result.returncode == 2 and needle in result.stderr, result.stderr
