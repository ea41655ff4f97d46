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


def dotted(loc: tuple[object, ...] | list[object]) -> str:
    """A pydantic error location as the dotted key a person writes in erdu.yaml (list items by index)."""
    return ".".join(str(part) for part in loc)


def config_error(exc: Exception, what: str, *, prefix: tuple[str, ...] = ()) -> ConfigError:
    """A pydantic ValidationError as one ConfigError: one line per problem, each naming its dotted key.

    `what` names the thing that was read ("settings", "monitors settings", "runbook x.yaml"); `prefix` is
    the key path of the section that was validated on its own. Input values are never echoed, so a
    secret in a wrong place does not end up in a log.
    """
    errors = exc.errors(include_input=False) if hasattr(exc, "errors") else []
    lines = []
    for error in errors:
        where = dotted((*prefix, *error["loc"])) or "(top level)"
        lines.append(f"  {where}: {error['msg'].removeprefix('Value error, ').removeprefix('Assertion failed, ')}")
    return ConfigError(f"invalid {what}:\n" + "\n".join(lines or [f"  {exc}"]))
