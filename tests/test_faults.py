"""Faults around the gateway: the ext_proc server going away and coming back.

No assert here times the gateway against the wall clock (the machine may be
loaded): the client's own timeout is set far above what the gateway should
take and far below what a fault would cost, so a hang shows as a client
that gave up.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from ext_proc.deploy.echo import EchoUpstream
from tests.gateway import ServerThread, start_gateway, stop_gateway

CONFIG = """
listeners:
  egress_traffic: {{address: 127.0.0.1, port: 0, timeout: 300s}}
llm_providers:
  - model: openai/gpt-5
    base_url: {upstream}
    access_key: sk-test
    default: true
archway:
  admin_port: 0
  message_timeout: {message_timeout}
"""

CLIENT_TIMEOUT_S = 20.0
"""Far above the 1 s message timeout and a loaded machine's delays; far below a
300 s message timeout or a stream left hanging."""


class ClientGaveUp(AssertionError):
    pass


def post(url: str, path: str = "/v1/chat/completions") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(
        url + path,
        data=b'{"model": "gpt-5", "messages": []}',
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=CLIENT_TIMEOUT_S) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()
    except (TimeoutError, urllib.error.URLError) as err:
        raise ClientGaveUp(f"no answer within {CLIENT_TIMEOUT_S:g}s: {err}") from err


def test_ext_proc_down_is_a_prompt_json_5xx_and_recovery_is_automatic(tmp_path: Path) -> None:
    with EchoUpstream(name="openai") as upstream:
        # Envoy would wait 300 s for an answer: only a prompt failure reaches
        # the client before it gives up.
        config = CONFIG.format(upstream=upstream.base_url, message_timeout="300s")
        gw = start_gateway(config, tmp_path, {"openai": upstream})
        try:
            assert post(gw.url)[0] == 200
            assert gw.server.running is not None
            port = gw.server.running.port
            gw.server.stop()

            status, headers, body = post(gw.url)
            assert status == 500
            assert headers["content-type"] == "application/json"
            error = json.loads(body)["error"]
            assert error["code"] == "router_unavailable" and error["type"] == "server_error"
            status, _, body = post(gw.url, "/v1/messages")
            assert status == 500 and json.loads(body)["type"] == "error"
            assert upstream.requests[1:] == []

            # A new server on the same port: Envoy reconnects by itself.
            gw.server = ServerThread(gw.config, port=port)
            gw.server.start()
            for _ in range(100):
                if post(gw.url)[0] == 200:
                    break
                time.sleep(0.1)
            else:
                raise AssertionError("Envoy did not reconnect to the new server")
        finally:
            stop_gateway(gw)


def test_ext_proc_killed_under_load_never_hangs_a_client(tmp_path: Path) -> None:
    with EchoUpstream(name="openai") as upstream:
        config = CONFIG.format(upstream=upstream.base_url, message_timeout="1s")
        gw = start_gateway(config, tmp_path, {"openai": upstream})
        answered = threading.Event()
        stopped = threading.Event()
        abandon = threading.Event()
        after_stop = 3  # requests each client sends once the server is gone

        def client() -> list[tuple[bool, int, str]]:
            seen: list[tuple[bool, int, str]] = []
            late = 0
            # Bounded: every post ends within the client's timeout.
            for _ in range(10_000):
                if late >= after_stop or abandon.is_set():
                    break
                began_after_stop = stopped.is_set()
                status, headers, _ = post(gw.url)
                seen.append((began_after_stop, status, headers.get("content-type", "")))
                if status == 200:
                    answered.set()
                late += began_after_stop
            return seen

        try:
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                futures = [pool.submit(client) for _ in range(4)]
                try:
                    # Stopped while the clients are mid-flight, once requests go through.
                    assert answered.wait(60), "no request succeeded before the stop"
                    gw.server.stop()
                    stopped.set()
                    # A client that waited past its timeout raises ClientGaveUp here.
                    results = [r for f in futures for r in f.result(timeout=300)]
                finally:
                    abandon.set()
            statuses = {status for _, status, _ in results}
            assert statuses <= {200, 500}, statuses
            assert 200 in statuses
            late = [status for began_after_stop, status, _ in results if began_after_stop]
            assert len(late) == 4 * after_stop and set(late) == {500}, late
            assert all(ctype == "application/json" for _, _, ctype in results)
        finally:
            stop_gateway(gw)
