"""What can go wrong with an upstream call before (or while) it streams, in the terms of /v1."""

from __future__ import annotations

from typing import Any


class UpstreamError(Exception):
    """Base: an upstream call that could not be made or did not end well."""

    status = 502
    code = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    """It could not be reached, closed the connection, answered 5xx or sent a malformed stream.
    Before any token this is worth one try on another replica."""


class UpstreamTimeout(UpstreamError):
    """No answer (or no next chunk) within the connection's read timeout: 504."""

    status = 504
    code = "upstream_timeout"


class UpstreamQueueFull(UpstreamError):
    """Every slot of the connection is busy and its queue is full: 429, retry later."""

    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after: int = 2) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamRejected(UpstreamError):
    """A 4xx from the upstream: its status and (if OpenAI-shaped) its body go back to the client."""

    def __init__(self, status: int, body: Any, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = body  # the decoded {"error": {...}} body, or None when it was not OpenAI-shaped
