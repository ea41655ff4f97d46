"""The `slack` section: Slack interactivity (the buttons on notification messages).

    slack:
      signing_secret: 8f14e45fceea167a5a36dedd4bea2543   # the Slack app's Signing Secret (a secret)
      response_hosts: [hooks.slack.com]   # where an interaction's response_url may point

ERDU_SLACK__SIGNING_SECRET sets the secret from the environment. Without a signing secret the interaction
endpoint (POST /v1/slack/interactions) refuses every request, and notifications still carry the buttons.
Slack users are mapped to people by `people.<key>.contacts.slack_user` (settings/people.py).
"""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import AfterValidator, Field, SecretStr, field_validator

from erdu_tasks.settings.common import Section

SLACK_HOOKS_HOST = "hooks.slack.com"


def _host(value: str) -> str:
    value = value.strip().lower()
    if not value or any(c in value for c in "@/?#%[] :"):
        raise ValueError(f"{value!r} is not a host name (no scheme, port or path)")
    return value


class SlackSection(Section):
    """Slack interactivity: the request signing secret and what the buttons do."""

    KEY: ClassVar[str] = "slack"

    signing_secret: SecretStr | None = None
    response_hosts: list[Annotated[str, AfterValidator(_host)]] = Field(
        default_factory=lambda: [SLACK_HOOKS_HOST], min_length=1, max_length=20)

    @field_validator("signing_secret")
    @classmethod
    def _not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            return None
        return value

    @property
    def enabled(self) -> bool:
        """True when a signing secret is set: only then are interactions accepted."""
        return self.signing_secret is not None


__all__ = ["SLACK_HOOKS_HOST", "SlackSection"]
