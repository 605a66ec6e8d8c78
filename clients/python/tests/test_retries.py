"""Retries, against a stand-in server that fails on purpose: what is retried, how often,
and what reaches the caller."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Iterator, List, Tuple

import pytest

import lancer

FAST = lancer.Retry(attempts=4, first_wait=0.01, most_wait=0.05)


class Flaky:
    """Answers each request with the next (status, body) of a script, then 200 {}."""

    def __init__(self, answers: List[Tuple[int, dict]]) -> None:
        self.answers = list(answers)
        self.seen: List[Tuple[str, str, dict]] = []
        flaky = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                flaky.seen.append((self.command, self.path, dict(self.headers)))
                status, body = flaky.answers.pop(0) if flaky.answers else (200, {"id": "ok"})
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                if status == 429:
                    self.send_header("retry-after", "0")
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = answer

            def log_message(self, *_: object) -> None:
                pass

        self.http = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"


@pytest.fixture()
def flaky(request: pytest.FixtureRequest) -> Iterator[Flaky]:
    made = Flaky(request.param)
    yield made
    made.http.shutdown()


def busy(code: str) -> dict:
    return {"error": {"code": code, "message": "try later"}}


@pytest.mark.parametrize("flaky", [[(503, busy("UNAVAILABLE")), (429, busy("TOO_MANY_REQUESTS"))]], indirect=True)
def test_a_read_is_retried_through_503_and_429(flaky: Flaky) -> None:
    assert lancer.Client(flaky.url, retry=FAST).tasks.get("t1") == {"id": "ok"}
    assert len(flaky.seen) == 3


@pytest.mark.parametrize("flaky", [[(503, busy("UNAVAILABLE"))]], indirect=True)
def test_a_submit_is_retried_with_the_same_idempotency_key(flaky: Flaky) -> None:
    lancer.Client(flaky.url, retry=FAST).tasks.submit(name="n", script="s.py")
    keys = [headers.get("idempotency-key") for _, _, headers in flaky.seen]
    assert len(keys) == 2 and keys[0] and keys[0] == keys[1]


@pytest.mark.parametrize("flaky", [[(503, busy("UNAVAILABLE"))]], indirect=True)
def test_a_pipeline_retry_is_never_sent_twice(flaky: Flaky) -> None:
    with pytest.raises(lancer.Unavailable) as raised:
        lancer.Client(flaky.url, retry=FAST).pipelines.retry("p1")
    assert raised.value.code == "UNAVAILABLE" and len(flaky.seen) == 1


@pytest.mark.parametrize("flaky", [[(503, busy("UNAVAILABLE"))] * 4], indirect=True)
def test_retries_end_and_the_last_error_reaches_the_caller(flaky: Flaky) -> None:
    with pytest.raises(lancer.Unavailable):
        lancer.Client(flaky.url, retry=FAST).tasks.get("t1")
    assert len(flaky.seen) == FAST.attempts


@pytest.mark.parametrize("flaky", [[(500, {"not": "an error body"})]], indirect=True)
def test_an_answer_without_the_error_format_still_becomes_a_lancer_error(flaky: Flaky) -> None:
    with pytest.raises(lancer.ServerError) as raised:
        lancer.Client(flaky.url, retry=FAST).tasks.get("t1")
    assert raised.value.code == "HTTP_500" and len(flaky.seen) == 1


def test_a_server_that_is_not_there_is_unavailable_after_the_retries() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(lancer.Unavailable) as raised:
        lancer.Client(f"http://127.0.0.1:{port}", retry=FAST).health()
    assert raised.value.code == "UNREACHABLE"
