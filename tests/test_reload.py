"""Config reload: good configs swap in, bad ones are refused, nothing in flight breaks."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import signal
import threading
import time
import urllib.request
from pathlib import Path

from ext_proc.config import load_config
from ext_proc.deploy.echo import EchoUpstream
from ext_proc.server.reload import ConfigReloader
from tests.gateway import start_gateway, stop_gateway

TEMPLATE = """
listeners:
  egress_traffic: {{address: 127.0.0.1, port: 0, timeout: 5s}}
llm_providers:
  - model: openai/gpt-5
    base_url: {upstream}
    access_key: sk-reload-secret
    default: true
  - model: openai/gpt-5.2
    base_url: {upstream}
    access_key: sk-reload-secret
model_aliases:
  fast:
    target: {target}
archway:
  admin_port: 0
"""


def _write(path: Path, text: str) -> None:
    # Write then rename, as editors and config managers do, so a reader never
    # sees half a file.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_reload_applies_good_configs_and_refuses_bad_ones(tmp_path: Path, caplog) -> None:
    path = tmp_path / "config.yaml"
    _write(path, TEMPLATE.format(upstream="http://127.0.0.1:9", target="gpt-5"))
    applied = []
    reloader = ConfigReloader(path, load_config(path), applied.append)

    _write(path, TEMPLATE.format(upstream="http://127.0.0.1:9", target="gpt-5.2"))
    assert reloader.reload().applied
    assert applied[-1].aliases == {"fast": "gpt-5.2"}

    caplog.set_level(logging.ERROR, logger="archway.reload")
    _write(path, "llm_providers: [\n")
    result = reloader.reload()
    assert not result.applied and "invalid config" in result.reason
    _write(path, TEMPLATE.format(upstream="http://127.0.0.1:9", target="nothing-here"))
    assert not reloader.reload().applied

    # A new upstream endpoint needs a new Envoy bootstrap: refused, with the way out.
    _write(path, TEMPLATE.format(upstream="http://127.0.0.1:10", target="gpt-5"))
    result = reloader.reload()
    assert not result.applied and "restart Envoy" in result.reason
    # Routing preferences load with the router at start: refused too.
    _write(
        path,
        TEMPLATE.format(upstream="http://127.0.0.1:9", target="gpt-5")
        + "routing_preferences:\n  - name: code\n    description: writing code\n"
        + "    models: [openai/gpt-5]\n",
    )
    result = reloader.reload()
    assert not result.applied and "preference router" in result.reason
    assert len(applied) == 1
    assert "keeping the running config" in caplog.text
    assert "sk-reload-secret" not in caplog.text


def test_sighup_and_file_changes_trigger_a_reload(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    _write(path, TEMPLATE.format(upstream="http://127.0.0.1:9", target="gpt-5"))
    applied = []

    async def scenario() -> None:
        # A long poll interval: only SIGHUP can trigger the first reload in time.
        reloader = ConfigReloader(path, load_config(path), applied.append, poll_s=30)
        reloader.start(install_sighup=True)
        try:
            _write(path, TEMPLATE.format(upstream="http://127.0.0.1:9", target="gpt-5.2"))
            os.kill(os.getpid(), signal.SIGHUP)
            for _ in range(100):
                if applied:
                    break
                await asyncio.sleep(0.02)
        finally:
            await reloader.stop()
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        assert applied and applied[-1].aliases == {"fast": "gpt-5.2"}

        polled: list[object] = []
        watcher = ConfigReloader(path, load_config(path), polled.append, poll_s=0.05)
        watcher.start(install_sighup=False)
        try:
            _write(path, TEMPLATE.format(upstream="http://127.0.0.1:9", target="gpt-5"))
            for _ in range(100):
                if polled:
                    break
                await asyncio.sleep(0.02)
        finally:
            await watcher.stop()
        assert polled

    asyncio.run(scenario())


def _post(url: str) -> tuple[int, str]:
    req = urllib.request.Request(
        url + "/v1/chat/completions",
        data=json.dumps({"model": "fast", "messages": []}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, resp.headers["x-archway-model"]


def test_no_request_fails_during_reloads_under_load(tmp_path: Path) -> None:
    with EchoUpstream(name="openai") as upstream:
        text = TEMPLATE.format(upstream=upstream.base_url, target="gpt-5")
        gw = start_gateway(text, tmp_path, {"openai": upstream}, watch=True)
        path = tmp_path / "config.yaml"
        try:
            done = threading.Event()
            give_up = time.monotonic() + 30.0

            def client() -> list[tuple[int, str]]:
                out = []
                while not done.is_set() and time.monotonic() < give_up:
                    out.append(_post(gw.url))
                return out

            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                futures = [pool.submit(client) for _ in range(4)]
                try:
                    # Alternate the alias target, waiting each time until the
                    # gateway serves it (the file is polled once a second).
                    for target in ("gpt-5.2", "gpt-5", "gpt-5.2", "gpt-5"):
                        _write(path, TEMPLATE.format(upstream=upstream.base_url, target=target))
                        deadline = time.monotonic() + 10.0
                        while _post(gw.url)[1] != f"openai/{target}":
                            assert time.monotonic() < deadline, f"{target} never took effect"
                            time.sleep(0.05)
                finally:
                    done.set()
                results = [r for f in futures for r in f.result(timeout=60)]
            assert {status for status, _ in results} == {200}
            assert {model for _, model in results} == {"openai/gpt-5", "openai/gpt-5.2"}
        finally:
            stop_gateway(gw)
