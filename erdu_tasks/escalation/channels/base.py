"""What every channel shares: the notification payload, the delivery result, the channel
interface, the common channel settings and the one place where httpx errors are translated."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from erdu_tasks import __version__
from erdu_tasks.settings.escalation import ChannelSettings

if TYPE_CHECKING:
    import httpx   # imported where a request is made: most processes never make one
    from erdu_tasks.model import Incident

SCHEMA = "erdu.notification/v1"
USER_AGENT = f"erdu/{__version__}"
MAX_TEXT_CHARS = 4000
"""Reason, root cause and each fix output are cut to this length in every payload."""
SUMMARY_MESSAGE_CHARS = 120
"""How much of the concrete message the one-line summary (subjects, chat fallbacks) carries."""
TRACEBACK_HEAD_LINES = 12
"""How many lines of the first occurrence's traceback every notification carries."""
MAX_LINE_CHARS = 300
"""Each traceback line is cut to this length."""
MAX_DETAIL_CHARS = 300
"""A peer's error body is cut to this length in a DeliveryResult."""


class NotificationKind(StrEnum):
    """Why a notification is sent."""

    TRIGGER = "trigger"
    RESOLVE = "resolve"
    DIGEST = "digest"
    REMINDER = "reminder"       # a silence ends soon
    FYI = "fyi"


def _cut(text: str | None, limit: int = MAX_TEXT_CHARS) -> str:
    text = text or ""
    if len(text) <= limit:
        return text
    return text[:limit] + f" …[{len(text) - limit} more chars]"


@dataclass(frozen=True)
class AttemptedFix:
    """One fix ERDU tried, and what it printed."""

    action: str
    ok: bool | None = None
    output: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "output", _cut(self.output))


@dataclass(frozen=True)
class Notification:
    """Everything a responder needs, built from an incident; the same payload goes to every channel."""

    incident_id: str
    title: str
    severity: str
    status: str
    reason: str
    level: int = 1
    repeat: int = 0
    kind: NotificationKind = NotificationKind.TRIGGER
    service: str | None = None
    affected_services: tuple[str, ...] = ()
    root_cause: str | None = None
    attempted_fixes: tuple[AttemptedFix, ...] = ()
    occurrences: int = 1
    see_command: str = ""
    url: str | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    held_count: int = 0
    held_incidents: tuple[str, ...] = ()
    message: str = ""
    """The first occurrence's concrete message (the title is the template: "Disk full on <*>")."""
    host: str | None = None
    labels: dict[str, str] = field(default_factory=dict, hash=False)
    traceback: tuple[str, ...] = ()
    """The head of the first occurrence's traceback (TRACEBACK_HEAD_LINES lines)."""
    paged_person: str | None = None      # the person this copy pages (a key of the `people` section)
    paged_contact: str | None = None     # their id on the channel (Slack member id, PagerDuty user id)

    def __post_init__(self) -> None:
        object.__setattr__(self, "severity", str(self.severity))
        object.__setattr__(self, "status", str(self.status))
        object.__setattr__(self, "kind", NotificationKind(self.kind))
        object.__setattr__(self, "reason", _cut(self.reason))
        object.__setattr__(self, "root_cause", _cut(self.root_cause) if self.root_cause else None)
        object.__setattr__(self, "affected_services", tuple(self.affected_services))
        object.__setattr__(self, "attempted_fixes", tuple(self.attempted_fixes))
        object.__setattr__(self, "message", _cut(self.message))
        object.__setattr__(self, "traceback", tuple(_cut(line, MAX_LINE_CHARS)
                                                    for line in self.traceback[:TRACEBACK_HEAD_LINES]))
        object.__setattr__(self, "labels", {str(k): _cut(str(v), MAX_LINE_CHARS)
                                            for k, v in sorted((self.labels or {}).items())})
        if not self.see_command:
            object.__setattr__(self, "see_command", f"erdu incidents show {self.incident_id}")

    @classmethod
    def from_incident(
        cls,
        incident: Incident,
        *,
        reason: str,
        level: int = 1,
        repeat: int = 0,
        kind: NotificationKind = NotificationKind.TRIGGER,
        attempted_fixes: Sequence[AttemptedFix] = (),
        see_command: str = "",
        url: str | None = None,
        now: datetime | None = None,
    ) -> Notification:
        """The notification for an incident; `attempted_fixes` come from escalation.runs.attempted_fixes."""
        diagnosis = incident.diagnosis or {}
        root = incident.root_cause or diagnosis.get("root_cause")
        brain = diagnosis.get("brain") or {}
        if root and root == diagnosis.get("root_cause") and brain.get("name") not in (None, "rules") \
                and not brain.get("fallback"):
            root = "model's advice: " + str(root)     # a model's words, said to be so wherever they are shown
        first = incident.first_occurrence(1 + TRACEBACK_HEAD_LINES)
        return cls(
            incident_id=incident.id,
            title=incident.title,
            severity=str(incident.severity),
            status=str(incident.status),
            reason=reason,
            level=level,
            repeat=repeat,
            kind=kind,
            service=incident.service,
            affected_services=tuple(incident.affected_services),
            root_cause=str(root) if root else None,
            attempted_fixes=tuple(attempted_fixes),
            occurrences=incident.occurrences,
            see_command=see_command,
            url=url,
            created_at=now or datetime.now(timezone.utc),
            message=first[0] if first else "",
            host=incident.host,
            labels=dict(incident.labels or {}),
            traceback=tuple(first[1:]),
        )

    @classmethod
    def digest(
        cls,
        *,
        channel: str,
        held: int,
        window_start: datetime,
        window_end: datetime,
        sample_incidents: tuple[str, ...] = (),
        see_command: str = "erdu incidents ls --status escalated",
    ) -> Notification:
        """The one message that says how many notifications a channel's rate limit held back."""
        return cls(
            incident_id=f"DIGEST-{window_start.astimezone(timezone.utc):%Y%m%d%H%M%S}",
            title=f"{held} notification(s) held back on {channel}",
            severity="P3",
            status="digest",
            reason=(
                f"{held} notification(s) for channel {channel!r} were held back between "
                f"{window_start.isoformat()} and {window_end.isoformat()} by its rate limit"
            ),
            kind=NotificationKind.DIGEST,
            see_command=see_command,
            created_at=window_end,
            held_count=held,
            held_incidents=tuple(sample_incidents),
        )

    @classmethod
    def reminder(cls, *, silence_id: str, what: str, ends_at: datetime, held: Sequence[str], author: str,
                 see_command: str, url: str | None = None, now: datetime | None = None) -> Notification:
        """The message that says a silence ends soon, and which incidents resume then."""
        return cls(
            incident_id=silence_id,
            title=f"silence {silence_id} ends at {ends_at.isoformat(timespec='minutes')}",
            severity="P4",
            status="reminder",
            reason=(f"silence {silence_id} by {author} ({what}) ends at {ends_at.isoformat(timespec='seconds')}; "
                    f"{len(held)} incident(s) it holds resume then unless it is extended"),
            kind=NotificationKind.REMINDER,
            see_command=see_command,
            url=url,
            created_at=now or datetime.now(timezone.utc),
            held_count=len(held),
            held_incidents=tuple(held[:10]),
        )

    def for_person(self, person: str, contact: str | None = None) -> Notification:
        """This notification as a page to one person (`contact`: their id on the channel that carries it)."""
        return replace(self, paged_person=person, paged_contact=contact)

    def summary(self) -> str:
        """One line: severity, id, title, level."""
        if self.kind in (NotificationKind.DIGEST, NotificationKind.REMINDER):
            return f"[ERDU] {self.title}"
        concrete = (f" — {_cut(' '.join(self.message.split()), SUMMARY_MESSAGE_CHARS)}"
                    if self.message and self.message.strip() != self.title.strip() else "")
        if self.kind is NotificationKind.RESOLVE:
            return f"[RESOLVED] [{self.severity}] {self.incident_id}: {self.title}{concrete}"
        if self.kind is NotificationKind.FYI:
            return f"[FYI] [{self.severity}] {self.incident_id}: {self.title}{concrete} (closed without a repair)"
        again = f", repeat {self.repeat}" if self.repeat else ""
        return f"[{self.severity}] {self.incident_id}: {self.title} (level {self.level}{again}){concrete}"

    def text(self) -> str:
        """A plain-text body for people (email, chat fallbacks)."""
        lines = [self.summary(), ""]
        if self.paged_person is not None:
            lines.append(f"Paged:     {self.paged_person}")
        lines.append(f"Status:    {self.status}")
        lines.append(f"Severity:  {self.severity}")
        if self.kind is not NotificationKind.DIGEST:
            lines.append(f"Level:     {self.level}" + (f" (repeat {self.repeat})" if self.repeat else ""))
            services = ", ".join(self.affected_services) or self.service or "unknown"
            lines.append(f"Services:  {services}")
            lines.append(f"Seen:      {self.occurrences} time(s)")
            if self.host:
                lines.append(f"Host:      {self.host}")
            if self.labels:
                lines.append("Labels:    " + ", ".join(f"{k}={v}" for k, v in self.labels.items()))
        if self.message:
            lines += ["", "First occurrence:", f"  {self.message}"]
            lines += [f"    {line}" for line in self.traceback]
        lines += ["", "Why:", f"  {self.reason}"]
        if self.root_cause:
            lines += ["", "Root-cause hypothesis:", f"  {self.root_cause}"]
        if self.attempted_fixes:
            lines += ["", "Attempted fixes:"]
            for fix in self.attempted_fixes:
                outcome = {True: "succeeded", False: "failed", None: "outcome unknown"}[fix.ok]
                lines.append(f"  - {fix.action}: {outcome}")
                for out_line in fix.output.splitlines()[:40]:
                    lines.append(f"      {out_line}")
        if self.held_incidents:
            lines += ["", "Some of the held incidents:"] + [f"  - {i}" for i in self.held_incidents]
        lines += ["", f"See it:    {self.see_command}"]
        if self.url:
            lines.append(f"Open:      {self.url}")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """The JSON payload (stable schema, used by the file and webhook channels)."""
        data: dict[str, Any] = {
            "schema": SCHEMA,
            "kind": self.kind.value,
            "incident_id": self.incident_id,
            "title": self.title,
            "severity": self.severity,
            "status": self.status,
            "reason": self.reason,
            "level": self.level,
            "repeat": self.repeat,
            "service": self.service,
            "affected_services": list(self.affected_services),
            "root_cause": self.root_cause,
            "attempted_fixes": [asdict(f) for f in self.attempted_fixes],
            "occurrences": self.occurrences,
            "see": {"command": self.see_command, **({"url": self.url} if self.url else {})},
            "created_at": self.created_at.isoformat(),
        }
        if self.kind not in (NotificationKind.DIGEST, NotificationKind.REMINDER):
            data["first_occurrence"] = {"message": self.message, "host": self.host, "labels": dict(self.labels),
                                        "traceback": list(self.traceback)}
        if self.kind is NotificationKind.DIGEST:
            data["digest"] = {"held": self.held_count, "sample_incidents": list(self.held_incidents)}
        if self.kind is NotificationKind.REMINDER:
            data["reminder"] = {"silence_id": self.incident_id, "held": self.held_count,
                                "sample_incidents": list(self.held_incidents)}
        if self.paged_person is not None:
            data["paged"] = {"person": self.paged_person}
        return data

    def to_json_bytes(self) -> bytes:
        """The payload as compact UTF-8 JSON with sorted keys (the exact bytes a webhook signs)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    def resolved(self) -> Notification:
        """This notification turned into a resolve notice."""
        return replace(self, kind=NotificationKind.RESOLVE)


@dataclass(frozen=True)
class DeliveryResult:
    """What one delivery attempt did; failures say whether retrying can help."""

    ok: bool
    channel: str
    detail: str = ""
    permanent: bool = False
    response_code: int | None = None
    retry_after: float | None = None

    @classmethod
    def sent(cls, channel: str, detail: str = "", response_code: int | None = None) -> DeliveryResult:
        """A delivery the peer accepted."""
        return cls(True, channel, detail, False, response_code)

    @classmethod
    def failed(
        cls,
        channel: str,
        detail: str,
        *,
        permanent: bool,
        response_code: int | None = None,
        retry_after: float | None = None,
    ) -> DeliveryResult:
        """A delivery that did not happen, with the reason."""
        return cls(False, channel, _cut(detail, MAX_DETAIL_CHARS), permanent, response_code, retry_after)

    @property
    def retryable(self) -> bool:
        """True when the delivery failed but a later attempt may succeed."""
        return not self.ok and not self.permanent

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe record for the incident's timeline and delivery table."""
        return asdict(self)


@runtime_checkable
class Channel(Protocol):
    """A way to reach people. send() and resolve() never raise: they return a DeliveryResult."""

    name: str

    def send(self, notification: Notification) -> DeliveryResult:
        """Deliver a trigger (or digest) notification."""
        ...

    def resolve(self, notification: Notification) -> DeliveryResult:
        """Tell the channel the incident is resolved."""
        ...


class BaseChannel:
    """Common behaviour: resolve notices, and no exception ever escapes send()/resolve()."""

    def __init__(self, name: str, settings: ChannelSettings) -> None:
        self.name = name
        self.settings = settings

    def send(self, notification: Notification) -> DeliveryResult:
        """Deliver a notification; any unexpected failure becomes a permanent DeliveryResult."""
        return self._guarded(notification)

    def resolve(self, notification: Notification) -> DeliveryResult:
        """Send a resolve notice, unless this channel has them switched off."""
        if not self.settings.send_resolved:
            return DeliveryResult.sent(self.name, "resolve notices are off for this channel")
        return self._guarded(notification.resolved())

    def _guarded(self, notification: Notification) -> DeliveryResult:
        try:
            return self._deliver(notification)
        except Exception as exc:  # noqa: BLE001 - a channel must report, never raise
            return DeliveryResult.failed(self.name, f"internal error: {type(exc).__name__}: {exc}", permanent=True)

    def _deliver(self, notification: Notification) -> DeliveryResult:
        raise NotImplementedError


def classify_status(code: int) -> tuple[bool, bool]:
    """(ok, permanent) for an HTTP status: 2xx sent; 408/425/429/5xx retry; anything else permanent."""
    if 200 <= code < 300:
        return True, False
    if code in (408, 425, 429) or code >= 500:
        return False, False
    return False, True


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def post_json(
    channel: str,
    url: str,
    body: bytes,
    *,
    timeout: float,
    headers: dict[str, str] | None = None,
    client: httpx.Client | None = None,
) -> DeliveryResult:
    """POST JSON bytes; the only place where httpx errors become DeliveryResults."""
    import httpx

    all_headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, **(headers or {})}
    try:
        if client is not None:
            response = client.post(url, content=body, headers=all_headers, timeout=timeout)
        else:
            with httpx.Client(timeout=timeout, follow_redirects=False) as own:
                response = own.post(url, content=body, headers=all_headers)
    except httpx.TimeoutException as exc:
        return DeliveryResult.failed(channel, f"timed out after {timeout}s: {type(exc).__name__}", permanent=False)
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        return DeliveryResult.failed(channel, f"bad URL: {exc}", permanent=True)
    except httpx.HTTPError as exc:
        return DeliveryResult.failed(channel, f"{type(exc).__name__}: {exc}", permanent=False)
    ok, permanent = classify_status(response.status_code)
    if ok:
        return DeliveryResult.sent(channel, f"HTTP {response.status_code}", response.status_code)
    detail = f"HTTP {response.status_code}: {response.text.strip()}"
    if 300 <= response.status_code < 400:
        detail += f" (redirected to {response.headers.get('location', '?')}; configure the final URL)"
    return DeliveryResult.failed(
        channel, detail, permanent=permanent, response_code=response.status_code, retry_after=_retry_after(response)
    )


def unix_now() -> int:
    """Seconds since the epoch (the default clock of signing channels)."""
    return int(time.time())
