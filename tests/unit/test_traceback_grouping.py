"""Python traceback grouping, measured on real tracebacks: precision and recall of "same bug" pairs.

The corpus is made here by raising real exceptions from real libraries (json, sqlite3, decimal, re,
socket, httpx and psycopg connecting to a refused port) and from small functions of this module
reached from different call sites. Each traceback carries the bug it shows: one code path (the
application's call chain and the line that failed), one exception type and one kind of failure in
the message's words. The values in a message (a key, a port, a position) vary between occurrences
of one bug, and so does what a deploy changes: the install path, the line numbers, and the frames
inside a library (a library or Python upgrade).
"""

from __future__ import annotations

import decimal
import itertools
import json
import random
import re
import socket
import sqlite3
import traceback
from collections.abc import Callable

import httpx
import psycopg

from erdu_tasks.ingest.detect.fingerprint import fingerprint


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- application code: small functions reached from different call sites --------------------------

def lookup(config: dict, key: str) -> object:
    return config[key]


def read_timeout(config: dict) -> object:
    return lookup(config, "timeout_" + config.get("unit", "s"))


def read_retries(config: dict) -> object:
    return lookup(config, "retries_" + config.get("unit", "s"))


def first(items: list) -> object:
    return items[0]


def newest_order(orders: list) -> object:
    return first(orders)


def oldest_order(orders: list) -> object:
    return first(list(reversed(orders)))


def both_limits(limits: dict, which: str) -> tuple:
    if which == "soft":
        soft = limits["soft"]
        return soft, None
    hard = limits["hard"]
    return None, hard


def parse_body(raw: str) -> object:
    return json.loads(raw)


def handle_webhook(raw: str) -> object:
    return parse_body(raw)


def load_settings(raw: str) -> object:
    return json.loads(raw)


def count_orders(db: sqlite3.Connection, customer: int) -> int:
    return db.execute("SELECT count(*) FROM orders WHERE customer = ?", (customer,)).fetchone()[0]


def add_user(db: sqlite3.Connection, email: str) -> None:
    db.execute("INSERT INTO users (email) VALUES (?)", (email,))


def to_money(text: str) -> decimal.Decimal:
    return decimal.Decimal(text).quantize(decimal.Decimal("0.01"))


def share(total: str, parts: int) -> decimal.Decimal:
    with decimal.localcontext() as ctx:
        ctx.traps[decimal.DivisionByZero] = True
        return decimal.Decimal(total) / decimal.Decimal(parts)


def compile_filter(pattern: str) -> re.Pattern:
    return re.compile(pattern)


def parse_pair(text: str) -> tuple[str, int]:
    key, value = text.split("=")
    return key, int(value)


def ping_cache(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def fetch_status(port: int) -> int:
    return httpx.get(f"http://127.0.0.1:{port}/status", timeout=2).status_code


def open_db(port: int) -> None:
    psycopg.connect(host="127.0.0.1", port=port, dbname="app", connect_timeout=2).close()


def walk(node: dict) -> int:
    return 1 + walk(node["next"])


def save_report(path: str) -> None:
    try:
        open(path).close()
    except FileNotFoundError as exc:
        raise RuntimeError(f"report {path!r} could not be saved") from exc


# --- the corpus --------------------------------------------------------------------------------------

def _cases(rng: random.Random) -> list[tuple[str, Callable[[], object]]]:
    """(bug, a call that raises it) for every bug, several times with different values."""
    word = lambda: "".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 9)))  # noqa: E731
    cases: list[tuple[str, Callable[[], object]]] = []

    def many(bug: str, make: Callable[[], Callable[[], object]], n: int = 4) -> None:
        cases.extend((bug, make()) for _ in range(n))

    def sqlite_missing_table() -> Callable[[], object]:
        customer = rng.randint(1, 10**6)
        return lambda: count_orders(sqlite3.connect(":memory:"), customer)

    def sqlite_duplicate() -> Callable[[], object]:
        email = f"{word()}@example.com"
        db = sqlite3.connect(":memory:")
        db.execute("CREATE TABLE users (email TEXT UNIQUE)")
        db.execute("INSERT INTO users VALUES (?)", (email,))
        return lambda: add_user(db, email)

    def recursion() -> Callable[[], object]:
        node: dict = {}
        for _ in range(rng.randint(3, 30)):
            node = {"next": node}
        return lambda: walk(node)

    many("webhook empty body", lambda: (lambda s=" " * rng.randint(0, 5): handle_webhook(s)))
    many("webhook truncated body", lambda: (lambda s='{"id": "' + word(): handle_webhook(s)))
    many("settings empty", lambda: (lambda s=" " * rng.randint(0, 5): load_settings(s)))
    many("config timeout missing", lambda: (lambda c={"unit": word()}: read_timeout(c)))
    many("config retries missing", lambda: (lambda c={"unit": word()}: read_retries(c)))
    many("newest of no orders", lambda: (lambda: newest_order([])))
    many("oldest of no orders", lambda: (lambda: oldest_order([])))
    many("soft limit missing", lambda: (lambda: both_limits({}, "soft")))
    many("hard limit missing", lambda: (lambda: both_limits({}, "hard")))
    many("orders table missing", sqlite_missing_table)
    many("duplicate user", sqlite_duplicate)
    many("bad amount", lambda: (lambda t=word() + "." + word(): to_money(t)))
    many("share by zero", lambda: (lambda t=str(rng.randint(1, 999)): share(t, 0)))
    many("bad filter", lambda: (lambda p="x" * rng.randint(0, 4) + "[" + word(): compile_filter(p)))
    many("pair without value", lambda: (lambda t=word(): parse_pair(t)))
    many("pair bad number", lambda: (lambda t=f"{word()}={word()}": parse_pair(t)))
    many("cache refused", lambda: (lambda p=_refused_port(): ping_cache(p)))
    many("status refused", lambda: (lambda p=_refused_port(): fetch_status(p)), n=3)
    many("database refused", lambda: (lambda p=_refused_port(): open_db(p)), n=3)
    many("runaway recursion", recursion, n=3)
    many("report not saved", lambda: (lambda p=f"/nonexistent/{word()}/{word()}.md": save_report(p)))
    return cases


_FILE_LINE = re.compile(r'^(\s+File ")([^"]*)(", line )(\d+)(.*)$')


def _deploy_drift(text: str, rng: random.Random) -> str:
    """What changes between deploys of one release line: the install path and line numbers of the
    application's files, and sometimes one frame inside a library (an upgraded library)."""
    release, shift = rng.randint(1, 99), rng.choice([0, 0, 3, 17])
    drop_library_frame = rng.random() < 0.3
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FILE_LINE.match(lines[i])
        if m and __file__ == m.group(2):
            lines[i] = f"{m.group(1)}/srv/release-{release}/app/tests/test_app.py{m.group(3)}{int(m.group(4)) + shift}{m.group(5)}"
        elif m and drop_library_frame and ("site-packages" in m.group(2) or "/lib/python" in m.group(2)):
            drop_library_frame = False
            i += 1
            while i < len(lines) and lines[i].startswith("    "):
                i += 1
            continue
        out.append(lines[i])
        i += 1
    return "\n".join(out)


def _corpus(seed: int = 19) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    corpus = []
    for bug, call in _cases(rng):
        try:
            call()
        except Exception:
            text = "2026-12-02 04:00:00,123 ERROR request failed\n" + traceback.format_exc()
        else:
            raise AssertionError(f"{bug}: did not raise")
        corpus.append((bug, _deploy_drift(text, rng)))
    return corpus


def _pairs_scores(corpus: list[tuple[str, str]]) -> tuple[float, float, int, int]:
    keys = [fingerprint(text, "api").key for _, text in corpus]
    same_key = same_bug = both = 0
    for (a, b) in itertools.combinations(range(len(corpus)), 2):
        k, g = keys[a] == keys[b], corpus[a][0] == corpus[b][0]
        same_key += k
        same_bug += g
        both += k and g
    return both / same_key, both / same_bug, same_key, same_bug


def test_same_bug_pairs_are_grouped_with_high_precision_and_recall():
    corpus = _corpus()
    assert len({bug for bug, _ in corpus}) == 21 and len(corpus) == 81
    precision, recall, grouped, same = _pairs_scores(corpus)
    print(f"\ntraceback grouping on {len(corpus)} tracebacks: precision {precision:.3f} ({grouped} pairs grouped), "
          f"recall {recall:.3f} ({same} same-bug pairs)")
    assert precision >= 0.95 and recall >= 0.9, (precision, recall)


def test_the_key_names_the_exception_its_message_shape_and_only_in_app_frames():
    corpus = dict(_corpus(seed=3))
    tpl = fingerprint(corpus["database refused"], "api").template
    assert tpl.startswith("Traceback psycopg.OperationalError(connection failed: connection to server at <*>, port <*>")
    assert "test_app.py:open_db:psycopg.connect(" in tpl
    assert "site-packages" not in tpl and "connection.py" not in tpl   # psycopg's own frames are not the app's
    recursion = fingerprint(corpus["runaway recursion"], "api").template
    assert recursion.count("test_app.py:walk:") == 1
    chained = fingerprint(corpus["report not saved"], "api").template
    assert chained.startswith("Traceback RuntimeError(report <*> could not be saved) <- FileNotFoundError(")


def test_grouping_without_in_app_frames_or_message_shape_would_fail_the_corpus():
    # The two parts of the key are each needed: lines from a library alone, or the frames without
    # the message, fall short on this corpus (so the scores above measure them).
    corpus = _corpus()
    by_type_only = [(bug, text.rsplit("\n", 1)[-1].split(":", 1)[0]) for bug, text in corpus]
    precision = _pairs_scores([(bug, t) for bug, t in by_type_only])[0]
    assert precision < 0.95
