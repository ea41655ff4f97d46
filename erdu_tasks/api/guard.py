"""The request guard: size limit, strict UTF-8 JSON, bounded nesting, text Postgres can store.

It runs before routing, so no handler ever sees a body it could half-store or choke on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from erdu_tasks.ingest.jsonsafe import check_tree as _check_tree
from erdu_tasks.ingest.jsonsafe import text_problem  # noqa: F401  (re-exported for the routes)

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class BodyError(ValueError):
    """A body refused before it reaches a handler; the message says why."""


def _refuse_constant(name: str) -> Any:
    raise BodyError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BodyError(f"number {text[:40]} is out of range")
    return value


def check_tree(data: Any, max_depth: int) -> None:
    """Raise BodyError if data nests deeper than max_depth or holds text Postgres cannot store."""
    _check_tree(data, max_depth, BodyError)


def decode_json(body: bytes, max_depth: int) -> Any:
    """Strict UTF-8, strict JSON (no NaN/Infinity), bounded depth; BodyError otherwise."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(f"body is not valid UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise BodyError(f"body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise BodyError(f"JSON nested deeper than {max_depth} levels") from None
    except BodyError:
        raise
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise BodyError(f"body is not acceptable JSON: {exc}") from None
    check_tree(data, max_depth)
    return data


def _default_body(path: str, detail: str) -> dict[str, Any]:
    return {"detail": detail}


async def _reply(send: Send, status: int, body_of: dict[str, Any]) -> None:
    body = json.dumps(body_of).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyGuard:
    """ASGI middleware: 413 over the size limit, 400 for a body that is not clean JSON (raw_paths excepted)
    or a bad URL."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, max_depth: int, drain_bytes: int | None = None,
                 error_body: Callable[[str, str], dict[str, Any]] = _default_body,
                 raw_paths: frozenset[str] = frozenset(),
                 form_paths: Callable[[str], bool] = lambda path: False) -> None:
        self.app = app
        # Paths whose body is not JSON (Slack's form-encoded, signed interactions): size-limited only,
        # passed on byte for byte (the signature covers the raw body); their handler checks the rest.
        self.raw_paths = raw_paths
        # Paths whose browser forms post application/x-www-form-urlencoded (the console): such a body is
        # checked as clean UTF-8 text and passed on as it is; everywhere else a body must be JSON.
        self.form_paths = form_paths
        self.error_body = error_body
        self.max_bytes = max_bytes
        self.max_depth = max_depth
        # Reading (and dropping) a too-large body lets the client see the 413 instead of a reset
        # connection; past this many bytes the connection is simply closed.
        self.drain_bytes = drain_bytes if drain_bytes is not None else max(16 * 1_048_576, 4 * max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        target = scope.get("path", "") + "?" + scope.get("query_string", b"").decode("latin-1")
        problem = text_problem(target) or ("NUL in the query string" if b"%00" in scope.get("query_string", b"")
                                           else None)
        if problem:
            await self._refuse(send, scope, 400, f"request URL refused: {problem}")
            return
        if scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await self._refuse(send, scope, 400, "Content-Length is not a number")
                return
            if int(declared) > self.max_bytes:
                await self._drain(receive, int(declared))
                await self._refuse(send, scope, 413,
                                   f"body of {int(declared)} bytes is over the limit of {self.max_bytes}")
                return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                if more:
                    await self._drain(receive, None)
                await self._refuse(send, scope, 413, f"body is over the limit of {self.max_bytes} bytes")
                return
        path = scope.get("path", "")
        if body and path not in self.raw_paths and self.form_paths(path) \
                and headers.get(b"content-type", b"").startswith(b"application/x-www-form-urlencoded"):
            problem = _form_problem(bytes(body))
            if problem:
                await self._refuse(send, scope, 400, problem)
                return
            await self.app(scope, _replay(bytes(body), receive), send)
            return
        if body and path not in self.raw_paths:
            try:
                decode_json(bytes(body), self.max_depth)
            except BodyError as exc:
                await self._refuse(send, scope, 400, str(exc))
                return
            # The body is JSON whatever the client called it (curl -d says form-urlencoded).
            scope = dict(scope)
            scope["headers"] = [(k, v) for k, v in scope.get("headers", []) if k != b"content-type"]
            scope["headers"].append((b"content-type", b"application/json"))
        await self.app(scope, _replay(bytes(body), receive), send)

    async def _refuse(self, send: Send, scope: Scope, status: int, detail: str) -> None:
        await _reply(send, status, self.error_body(scope.get("path", ""), detail))

    async def _drain(self, receive: Receive, declared: int | None) -> None:
        if declared is not None and declared > self.drain_bytes:
            return
        seen = 0
        while seen <= self.drain_bytes:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return


def _form_problem(body: bytes) -> str | None:
    """Why a form body is refused (not UTF-8 once decoded, NUL or other text Postgres cannot store), or None."""
    from urllib.parse import parse_qsl

    try:
        pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True, errors="strict", max_num_fields=200)
    except (UnicodeDecodeError, ValueError) as exc:
        return f"form body refused: {exc}"
    for key, value in pairs:
        problem = text_problem(key) or text_problem(value)
        if problem:
            return f"form field refused: {problem}"
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
