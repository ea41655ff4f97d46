"""Bearer tokens: a write token (reads too) and a read-only token, compared in constant time."""

from __future__ import annotations

import hmac
from enum import StrEnum
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from erdu_tasks.api.config import ApiConfig


class Access(StrEnum):
    """What a caller may do."""

    NONE = "none"
    READ = "read"
    WRITE = "write"


bearer = HTTPBearer(auto_error=False, description="ERDU_API_TOKEN (read and write) or ERDU_API_READ_TOKEN (read)")


def same_secret(presented: str, expected: str) -> bool:
    """Constant-time comparison of two secrets (any characters)."""
    return hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))


def access_for(config: ApiConfig, presented: str | None) -> Access:
    """The access a presented token grants; everything is allowed when no token is configured."""
    if not config.auth_enabled:
        return Access.WRITE
    if not presented:
        return Access.NONE
    # Both comparisons always run, so timing does not tell which token was close.
    is_write = same_secret(presented, config.token or "")
    is_read = bool(config.read_token) and same_secret(presented, config.read_token or "")
    if is_write:
        return Access.WRITE
    return Access.READ if is_read else Access.NONE


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, message, headers={"WWW-Authenticate": "Bearer"})


def _presented(credentials: HTTPAuthorizationCredentials | None) -> str | None:
    return credentials.credentials if credentials else None


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def require_read(request: Request, credentials: Credentials) -> Access:
    """Dependency: a read or write token (or no token configured)."""
    access = access_for(request.app.state.erdu.config, _presented(credentials))
    if access is Access.NONE:
        raise _unauthorized("a valid bearer token is required (Authorization: Bearer <token>)")
    return access


def require_write(request: Request, credentials: Credentials) -> Access:
    """Dependency: the write token (or no token configured)."""
    access = access_for(request.app.state.erdu.config, _presented(credentials))
    if access is Access.NONE:
        raise _unauthorized("a valid bearer token is required (Authorization: Bearer <token>)")
    if access is Access.READ:
        raise HTTPException(403, "the read-only token cannot change anything; use the write token")
    return access
