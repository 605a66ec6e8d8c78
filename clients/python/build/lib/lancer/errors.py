"""Exceptions for every answer lancer gives that is not a success.

Each carries the API's ``code`` (``TASK_NOT_FOUND``, ``CONFLICT``, ...), its message and the
HTTP status, and is raised as the class that matches the status, so callers catch what they
mean: ``except lancer.NotFound``.
"""

from __future__ import annotations

from typing import Dict, Optional, Type


class LancerError(Exception):
    """An error answer from lancer, or no answer at all."""

    def __init__(self, code: str, message: str, status: Optional[int] = None) -> None:
        super().__init__(f"{code}: {message}" if status is None else f"{status} {code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class InvalidRequest(LancerError):
    """400: the request was refused as it stands; the message names what is wrong."""


class Unauthorized(LancerError):
    """401: no API key, or one the server does not know."""


class Forbidden(LancerError):
    """403: refused for this caller or origin."""


class NotFound(LancerError):
    """404: no such task, pipeline, dataset, model or route for this tenant."""


class RequestTimeout(LancerError):
    """408: the request's body did not arrive in time."""


class Conflict(LancerError):
    """409: the thing is not in a state that allows this (a finished task's cancel, ...)."""


class PayloadTooLarge(LancerError):
    """413: the body or upload is over the server's limit or the tenant's quota."""


class TooManyRequests(LancerError):
    """429: over a limit for now; retried with backoff before it reaches the caller."""


class Unavailable(LancerError):
    """502/503/504, or the server could not be reached: retried before it is raised."""


class ServerError(LancerError):
    """500: the server failed; its log says why."""


_BY_STATUS: Dict[int, Type[LancerError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    408: RequestTimeout,
    409: Conflict,
    413: PayloadTooLarge,
    429: TooManyRequests,
    502: Unavailable,
    503: Unavailable,
    504: Unavailable,
}


def error_for(status: int, code: str, message: str) -> LancerError:
    """The exception for an answer with ``status`` and the API's error body."""
    kind = _BY_STATUS.get(status, ServerError if status >= 500 else LancerError)
    return kind(code, message, status)
