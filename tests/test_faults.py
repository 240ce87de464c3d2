"""Faults around the gateway: the ext_proc server going away and coming back."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

from ext_proc.deploy.echo import EchoUpstream
from tests.gateway import ServerThread, start_gateway, stop_gateway

CONFIG = """
listeners:
  egress_traffic: {{address: 127.0.0.1, port: 0, timeout: 5s}}
llm_providers:
  - model: openai/gpt-5
    base_url: {upstream}
    access_key: sk-test
    default: true
archway:
  admin_port: 0
  message_timeout: 1s
"""


def post(url: str, path: str = "/v1/chat/completions") -> tuple[int, dict[str, str], bytes, float]:
    req = urllib.request.Request(
        url + path,
        data=b'{"model": "gpt-5", "messages": []}',
        headers={"content-type": "application/json"},
    )
    start = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read(), time.monotonic() - start
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read(), time.monotonic() - start


def test_ext_proc_down_is_a_prompt_json_5xx_and_recovery_is_automatic(tmp_path: Path) -> None:
    with EchoUpstream(name="openai") as upstream:
        gw = start_gateway(
            CONFIG.format(upstream=upstream.base_url), tmp_path, {"openai": upstream}
        )
        try:
            assert post(gw.url)[0] == 200
            assert gw.server.running is not None
            port = gw.server.running.port
            gw.server.stop()

            status, headers, body, elapsed = post(gw.url)
            assert status == 500 and elapsed < 2.0
            assert headers["content-type"] == "application/json"
            error = json.loads(body)["error"]
            assert error["code"] == "router_unavailable" and error["type"] == "server_error"
            status, _, body, _ = post(gw.url, "/v1/messages")
            assert status == 500 and json.loads(body)["type"] == "error"
            assert upstream.requests[1:] == []

            # A new server on the same port: Envoy reconnects by itself.
            gw.server = ServerThread(gw.config, port=port)
            gw.server.start()
            deadline = time.monotonic() + 1.0
            while post(gw.url)[0] != 200:
                assert time.monotonic() < deadline, "Envoy did not recover within a second"
                time.sleep(0.05)
        finally:
            stop_gateway(gw)


def test_ext_proc_killed_under_load_never_hangs_a_client(tmp_path: Path) -> None:
    import concurrent.futures

    with EchoUpstream(name="openai") as upstream:
        gw = start_gateway(
            CONFIG.format(upstream=upstream.base_url), tmp_path, {"openai": upstream}
        )
        try:
            stop_at = time.monotonic() + 2.0

            def client() -> list[tuple[int, str, float]]:
                seen = []
                while time.monotonic() < stop_at:
                    status, headers, _, elapsed = post(gw.url)
                    seen.append((status, headers.get("content-type", ""), elapsed))
                return seen

            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                futures = [pool.submit(client) for _ in range(4)]
                time.sleep(0.7)
                gw.server.stop()
                results = [r for f in futures for r in f.result(timeout=30)]
            statuses = {status for status, _, _ in results}
            assert statuses <= {200, 500}, statuses
            assert 500 in statuses and 200 in statuses
            # message_timeout is 1s: no client waits much beyond it.
            assert max(elapsed for _, _, elapsed in results) < 2.0
            assert all(ctype == "application/json" for _, ctype, _ in results)
        finally:
            stop_gateway(gw)
