"""Who is signed in: a token becomes a signed session cookie; roles decide what each person may do.

A person signs in with their `people.NAME.token` (role from the people section), the API's write token
(`api_token`, role admin, recorded as "api-token") or its read token (`api_read_token`, viewer,
"api-read-token"). With no token configured at all (the API then listens on localhost only and allows
everything) a name is enough and every name is an admin, as on the API.

The cookie holds the person's key, a tag of the token they signed in with, the time and a nonce, signed
with HMAC-SHA256 under a random key kept in Postgres (console_keys): changing or removing a person's
token, or their removal from the settings, ends their sessions, and their role is read from the settings
on every request, never from the cookie. HttpOnly, SameSite=Strict, Secure behind https. Every form
carries a CSRF token derived from the session's nonce.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from erdu_tasks.settings.people import PERSON_NAME, PersonRole
from erdu_tasks.settings import secret_value
from erdu_tasks.api.auth import same_secret

COOKIE = "erdu_session"
LOGIN_COOKIE = "erdu_login"   # the sign-in form's own CSRF token (double submit), before any session
SESSION_SECONDS = 12 * 3600
API_WRITER = "api-token"
API_READER = "api-read-token"


@dataclass(frozen=True)
class Person:
    """A signed-in person: the key recorded on their actions, and what they may do."""

    key: str
    role: PersonRole
    display_name: str | None = None
    nonce: str = ""

    def may(self, needed: PersonRole) -> bool:
        """True when this person's role includes `needed`."""
        return self.role.allows(needed)


def _tag(token: str | None) -> str:
    """A short, non-reversible tag of a token: a session dies when its token changes."""
    return hashlib.sha256((token or "").encode("utf-8")).hexdigest()[:16] if token else ""


class Accounts:
    """Who may sign in, built from the settings once per process."""

    def __init__(self, settings: Any) -> None:
        self._people: dict[str, tuple[PersonRole, str | None, str | None]] = {}
        for key, person in (settings.people or {}).items():
            self._people[key] = (person.role, secret_value(person.token), person.display_name)
        writer, reader = secret_value(settings.api_token), secret_value(settings.api_read_token)
        if writer:
            self._people.setdefault(API_WRITER, (PersonRole.admin, writer, "the API's write token"))
        if reader:
            self._people.setdefault(API_READER, (PersonRole.viewer, reader, "the API's read token"))

    @property
    def open(self) -> bool:
        """True when no token is configured: a name is enough to sign in (localhost only)."""
        return not any(token for _, token, _ in self._people.values())

    def by_token(self, presented: str) -> tuple[str, PersonRole] | None:
        """The person whose token this is; every configured token is compared (constant time each)."""
        found = None
        for key, (role, token, _) in self._people.items():
            if token and same_secret(presented, token) and found is None:
                found = (key, role)
        return found

    def by_name(self, name: str) -> tuple[str, PersonRole] | None:
        """Open mode only: any well-formed name signs in as an admin."""
        if not self.open or not PERSON_NAME.match(name):
            return None
        return name, PersonRole.admin

    def token_tag(self, key: str) -> str:
        """The tag of this person's current token ('' for none)."""
        entry = self._people.get(key)
        return _tag(entry[1]) if entry else ""

    def current(self, key: str, tag: str) -> Person | None:
        """The person a session names, if they may still be signed in (same token; still configured)."""
        if self.open:
            return Person(key, PersonRole.admin) if PERSON_NAME.match(key) and tag == "" else None
        entry = self._people.get(key)
        if entry is None or not entry[1] or not hmac.compare_digest(_tag(entry[1]), tag):
            return None
        return Person(key, entry[0], entry[2])


class Signer:
    """Signs and checks session cookies and CSRF tokens with one key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, purpose: str, data: bytes) -> str:
        digest = hmac.new(self._key, purpose.encode() + b"\0" + data, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def session(self, key: str, tag: str, *, now: float | None = None) -> str:
        """A new session cookie's value."""
        body = json.dumps([key, tag, int(now or time.time()), secrets.token_urlsafe(12)],
                          separators=(",", ":")).encode()
        payload = base64.urlsafe_b64encode(body).decode().rstrip("=")
        return f"{payload}.{self._mac('session', payload.encode())}"

    def read(self, cookie: str, *, now: float | None = None) -> tuple[str, str, str] | None:
        """(person key, token tag, nonce) of a valid, unexpired cookie; None otherwise."""
        payload, _, mac = (cookie or "").partition(".")
        if not payload or len(cookie) > 1024 or not hmac.compare_digest(self._mac("session", payload.encode()), mac):
            return None
        try:
            key, tag, issued, nonce = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except (ValueError, TypeError):
            return None
        if not (isinstance(key, str) and isinstance(tag, str) and isinstance(issued, int) and isinstance(nonce, str)):
            return None
        age = (now or time.time()) - issued
        return (key, tag, nonce) if 0 <= age < SESSION_SECONDS + 60 else None

    def csrf(self, nonce: str) -> str:
        """The CSRF token of the session with this nonce (or of a sign-in form)."""
        return self._mac("csrf", nonce.encode())

    def csrf_ok(self, nonce: str, presented: str | None) -> bool:
        """True when `presented` is this session's CSRF token."""
        return bool(nonce) and bool(presented) and hmac.compare_digest(self.csrf(nonce), presented or "")


def load_key(conn: Any) -> bytes:
    """The console's signing key from Postgres, made on first use (every API process then shares it)."""
    conn.execute("INSERT INTO console_keys (name, secret) VALUES ('session', %s) ON CONFLICT (name) DO NOTHING",
                 (secrets.token_bytes(32),))
    row = conn.execute("SELECT secret FROM console_keys WHERE name = 'session'").fetchone()
    return bytes(row["secret"])
