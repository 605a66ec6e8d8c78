"""One request to lancer, sent by a blocking or an asyncio transport with the same rules.

A :class:`Call` says what to send and whether sending it twice is harmless. Both transports
retry a harmless call with exponential backoff (and the server's ``Retry-After``) on 429,
502, 503, 504 and a dropped connection; a call that was never sent (the connection was
refused) is retried whatever it is. Every other failure becomes a :class:`LancerError`.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional

import httpx

from .errors import LancerError, Unavailable, error_for

API = "/api/v1"
DEFAULT_URL = "http://127.0.0.1:8000"
RETRIED_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class Call:
    """One request: ``path`` is under ``/api/v1`` unless ``root`` (``/healthz``)."""

    method: str
    path: str
    params: Optional[Mapping[str, Any]] = None
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    # A body made afresh for each try (an upload streams a file and cannot be rewound):
    # bytes, or an iterator of them (an async one for the asyncio client).
    body: Optional[Callable[[], Any]] = None
    idempotent: bool = True
    root: bool = False

    def url(self) -> str:
        return self.path if self.root else API + self.path


@dataclass(frozen=True)
class Retry:
    """How often and how patiently a harmless call is sent again."""

    attempts: int = 5
    first_wait: float = 0.25
    most_wait: float = 8.0

    def wait(self, attempt: int, response: Optional[httpx.Response]) -> float:
        asked = _retry_after(response)
        if asked is not None:
            return min(asked, self.most_wait)
        backoff = min(self.most_wait, self.first_wait * 2.0 ** (attempt - 1))
        return backoff * (0.5 + random.random() / 2)


def _retry_after(response: Optional[httpx.Response]) -> Optional[float]:
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def settings(url: Optional[str], api_key: Optional[str]) -> "tuple[str, Dict[str, str]]":
    """The base URL and headers, from the arguments or ``LANCER_URL`` / ``LANCER_API_KEY``."""
    base = (url or os.environ.get("LANCER_URL") or DEFAULT_URL).rstrip("/")
    key = api_key if api_key is not None else os.environ.get("LANCER_API_KEY")
    headers = {"user-agent": "lancer-python/0.1"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    return base, headers


def raise_for(response: httpx.Response) -> httpx.Response:
    """The response itself when it is a success, else its error as an exception."""
    if response.is_success:
        return response
    try:
        detail = response.json()["error"]
        code, message = str(detail["code"]), str(detail["message"])
    except (ValueError, KeyError, TypeError):
        code, message = f"HTTP_{response.status_code}", response.text[:500]
    raise error_for(response.status_code, code, message)


def _should_retry(call: Call, response: Optional[httpx.Response], error: Optional[Exception]) -> bool:
    if isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout)):
        return True  # nothing reached the server
    if error is not None:
        return call.idempotent and isinstance(error, httpx.TransportError)
    return call.idempotent and response is not None and response.status_code in RETRIED_STATUSES


def _unreachable(call: Call, error: Exception) -> LancerError:
    return Unavailable("UNREACHABLE", f"{call.method} {call.url()}: {type(error).__name__}: {error}")


def _request(call: Call) -> Dict[str, Any]:
    return {
        "method": call.method,
        "url": call.url(),
        "params": {k: v for k, v in (call.params or {}).items() if v is not None},
        "json": call.json,
        "headers": dict(call.headers),
        "content": call.body() if call.body is not None else None,
    }


def _settle(
    call: Call,
    retry: Retry,
    attempt: int,
    response: Optional[httpx.Response],
    error: Optional[Exception],
) -> "httpx.Response | float":
    """The response a try ends with, or how long to wait before the next try; raises the
    error a failed last try ends with."""
    if attempt < retry.attempts and _should_retry(call, response, error):
        return retry.wait(attempt, response)
    if error is not None:
        raise _unreachable(call, error) from error
    assert response is not None
    return raise_for(response)


class SyncTransport:
    def __init__(self, http: httpx.Client, retry: Retry) -> None:
        self.http = http
        self.retry = retry

    def send(self, call: Call) -> httpx.Response:
        attempt = 0
        while True:
            attempt += 1
            response, error = None, None
            try:
                response = self.http.request(**_request(call))
            except httpx.TransportError as err:
                error = err
            outcome = _settle(call, self.retry, attempt, response, error)
            if isinstance(outcome, httpx.Response):
                return outcome
            time.sleep(outcome)


class AsyncTransport:
    def __init__(self, http: httpx.AsyncClient, retry: Retry) -> None:
        self.http = http
        self.retry = retry

    async def send(self, call: Call) -> httpx.Response:
        attempt = 0
        while True:
            attempt += 1
            response, error = None, None
            try:
                response = await self.http.request(**_request(call))
            except httpx.TransportError as err:
                error = err
            outcome = _settle(call, self.retry, attempt, response, error)
            if isinstance(outcome, httpx.Response):
                return outcome
            await asyncio.sleep(outcome)
