"""ERDU's error tree: transient errors are retried with backoff, permanent ones escalate."""


class ErduError(Exception):
    """Base of every error ERDU raises on purpose."""


class TransientError(ErduError):
    """Worth retrying: a database, broker or HTTP peer was briefly unreachable."""

    def __init__(self, message: str, *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(ErduError):
    """Not worth retrying: the incident is escalated with this reason."""


class InvalidTransition(PermanentError):
    """A status change the status machine forbids."""


class InvalidEvent(PermanentError):
    """An event that does not match the Event contract."""


class ConfigError(ErduError):
    """A configuration file or setting is wrong; raised at start-up with the place and reason."""


class ServiceUnreachable(ErduError):
    """Redis or Postgres cannot be reached at start-up; the message says which URL and how to fix it."""
