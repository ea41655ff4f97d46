"""Email channel: a plain-text message over SMTP (optionally STARTTLS or implicit TLS, and login).

Every message about one incident carries `References: <INCIDENT-ID@erdu>`, so mail readers
thread them together. Control characters in the title never reach a header.
"""

from __future__ import annotations

import re
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from erdu_tasks.escalation.channels.base import BaseChannel, DeliveryResult, Notification
from erdu_tasks.settings.escalation import EmailSettings

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_SUBJECT_MAX = 200


def build_message(n: Notification, settings: EmailSettings) -> EmailMessage:
    """The email for a notification."""
    msg = EmailMessage()
    subject = _CONTROL.sub(" ", f"{settings.subject_prefix} {n.summary()}").strip()
    msg["Subject"] = subject[:_SUBJECT_MAX]
    msg["From"] = settings.sender
    msg["To"] = ", ".join(settings.recipients)
    msg["Date"] = formatdate(n.created_at.timestamp(), localtime=False)
    msg["Message-ID"] = make_msgid(domain="erdu")
    thread = re.sub(r"[^A-Za-z0-9_.-]", "_", n.incident_id)
    msg["References"] = f"<{thread}@erdu>"
    msg["X-ERDU-Incident"] = thread
    msg["X-ERDU-Severity"] = _CONTROL.sub(" ", n.severity)
    msg.set_content(n.text())
    return msg


def _smtp_failure(channel: str, exc: BaseException) -> DeliveryResult:
    """Translate smtplib/ssl/socket errors: 4xx and network trouble retry, 5xx and config errors do not."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        permanent = all(code >= 500 for code in codes)
        return DeliveryResult.failed(channel, f"recipients refused: {exc.recipients}", permanent=permanent,
                                     response_code=max(codes) if codes else None)
    if isinstance(exc, smtplib.SMTPResponseException):
        message = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        return DeliveryResult.failed(channel, f"SMTP {exc.smtp_code}: {message}", permanent=exc.smtp_code >= 500,
                                     response_code=exc.smtp_code)
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return DeliveryResult.failed(channel, f"server does not support it: {exc}", permanent=True)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return DeliveryResult.failed(channel, f"TLS certificate rejected: {exc}", permanent=True)
    return DeliveryResult.failed(channel, f"{type(exc).__name__}: {exc}", permanent=False)


class EmailChannel(BaseChannel):
    """Sends plain-text email through one SMTP server."""

    def __init__(self, name: str, settings: EmailSettings) -> None:
        super().__init__(name, settings)
        self.email = settings

    def _tls_context(self) -> ssl.SSLContext:
        cafile = str(self.email.ca_file) if self.email.ca_file else None
        return ssl.create_default_context(cafile=cafile)

    def _deliver(self, notification: Notification) -> DeliveryResult:
        s = self.email
        msg = build_message(notification, s)
        try:
            if s.security == "ssl":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout, context=self._tls_context())
            else:
                smtp = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
            with smtp:
                if s.security == "starttls":
                    smtp.starttls(context=self._tls_context())
                if s.username is not None and s.password is not None:
                    smtp.login(s.username, s.password.get_secret_value())
                refused = smtp.send_message(msg)
        except (smtplib.SMTPException, ssl.SSLError, OSError) as exc:
            return _smtp_failure(self.name, exc)
        detail = f"accepted by {s.host}:{s.port} for {len(s.recipients) - len(refused)} recipient(s)"
        if refused:
            detail += f"; refused: {sorted(refused)}"
        return DeliveryResult.sent(self.name, detail, 250)
