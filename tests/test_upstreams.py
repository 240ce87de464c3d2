"""The echo provider answers a kept-alive connection without Nagle's delay: one
request after another must not wait for the client's delayed ACK (~40 ms each
on Linux)."""

from __future__ import annotations

import http.client
import json
import time

from ext_proc.deploy.echo import EchoUpstream

_REQUESTS = 20
_JSON = {"content-type": "application/json"}
_BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})


def _sequential_keepalive_s(port: int) -> float:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        # The first request opens the connection; only the ones after it ride
        # a connection whose ACKs the client delays.
        connection.request("POST", "/v1/chat/completions", _BODY, _JSON)
        connection.getresponse().read()
        started = time.perf_counter()
        for _ in range(_REQUESTS):
            connection.request("POST", "/v1/chat/completions", _BODY, _JSON)
            response = connection.getresponse()
            assert response.status == 200
            response.read()
        return time.perf_counter() - started
    finally:
        connection.close()


def test_keepalive_answers_are_not_held_back_by_nagle() -> None:
    with EchoUpstream() as upstream:
        # With Nagle's delay each answer takes >= 40 ms: 20 take over 0.8 s. The
        # bound is generous so a loaded machine does not fail it.
        assert _sequential_keepalive_s(upstream.port) < 0.5
