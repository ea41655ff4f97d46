"""http_call: an HTTP request described in the runbook (reset a connection pool, call an admin endpoint)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator

from erdu_tasks.fixer.actions.base import ActionContext, ActionResult, ParamsModel, as_int_list, http_exchange

NAME = "http_call"

Method = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


def check_url(url: str) -> str:
    """Only http:// and https:// URLs."""
    if not url.lower().startswith(("http://", "https://")):
        raise ValueError("url must start with http:// or https://")
    return url


class Params(ParamsModel):
    """method, url, headers, a JSON body, accepted statuses (default: any 2xx), TLS verification."""

    method: Method = "GET"
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    json_body: Any = Field(default=None, alias="json")
    expect_status: Annotated[list[int] | None, BeforeValidator(as_int_list)] = None
    verify_tls: bool = True

    @field_validator("url")
    @classmethod
    def _http_only(cls, url: str) -> str:
        return check_url(url)


def describe(params: Params) -> str:
    """The request line (headers are left out: they may carry tokens)."""
    return f"{params.method} {params.url}"


def run(params: Params, ctx: ActionContext) -> ActionResult:
    """Send the request and judge the answer by its status."""
    return http_exchange(params.method, params.url, timeout=ctx.timeout, headers=params.headers,
                         json_body=params.json_body, expect_status=params.expect_status,
                         verify_tls=params.verify_tls, policy=ctx.url_policy)
