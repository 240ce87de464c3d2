"""A whole gateway on loopback for end-to-end tests: fake upstreams, the ext_proc
server, and a real Envoy.

The server runs either as users run it, ``archway serve`` in a child process
(``server_process=True``), or on an event loop thread of the test's own process,
where a test can give it a scripted router or look inside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ext_proc.config import Config, load_config
from ext_proc.deploy.bootstrap import render_bootstrap
from ext_proc.deploy.echo import EchoUpstream, ReceivedRequest
from ext_proc.deploy.envoy_process import EnvoyProcess
from ext_proc.router.factory import build_router
from ext_proc.router.service import ConfiguredRouter
from ext_proc.server.service import RunningServer, start_server
from ext_proc.server.workers import READY_LINE
from tests.processes import read_until

RouterFactory = Callable[[Config], ConfiguredRouter | None]


class RecordingUpstream(Protocol):
    """A fake provider that remembers what it received (``EchoUpstream``, ``FakeProvider``)."""

    @property
    def requests(self) -> list[ReceivedRequest]: ...

    def clear(self) -> None: ...


LOOPBACK_LISTENER = """\
version: v0.4.0
listeners:
  - type: model
    name: egress_traffic
    address: 127.0.0.1
    port: 0
    timeout: 10s
"""
"""A model listener on a free loopback port: the start of every end-to-end config."""

OPENAI_AND_ANTHROPIC = """\
model_providers:
  - model: openai/gpt-5.2
    base_url: {openai}
    access_key: sk-openai-test
    default: true
  - model: openai/gpt-5
    base_url: {openai}
    access_key: sk-openai-test
  - model: anthropic/claude-sonnet-4-5
    base_url: {anthropic}
    access_key: sk-ant-test
"""
"""Three models on two fake providers (``.format(openai=..., anthropic=...)``)."""


class ServerThread:
    """The grpc.aio ext_proc server, run on an event loop in a background thread."""

    def __init__(
        self,
        config: Config,
        port: int = 0,
        *,
        watch: bool = False,
        router_factory: RouterFactory = build_router,
    ) -> None:
        self._config = config
        self._port = port
        self._watch = watch
        self._router_factory = router_factory
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.running: RunningServer | None = None

    def start(self) -> int:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(
            start_server(
                self._config,
                "127.0.0.1",
                self._port,
                watch=self._watch,
                router_factory=self._router_factory,
            ),
            self._loop,
        )
        self.running = fut.result(timeout=60)
        return self.running.port

    def stop(self) -> None:
        if self._loop.is_closed():
            return
        if self.running is not None:
            asyncio.run_coroutine_threadsafe(self.running.stop(0.5), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


class ServerProcess:
    """``archway serve CONFIG`` in a child process, one worker, as a user runs it.
    Its stderr goes to ``log`` (read it when a test fails)."""

    def __init__(self, config_path: Path, log: Path, *extra_args: str) -> None:
        self._command = [
            sys.executable,
            "-m",
            "ext_proc.cli",
            "serve",
            str(config_path),
            "--port",
            "0",
            "--workers",
            "1",
            "--metrics-port",
            "off",
            *extra_args,
        ]
        self._log = log
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def start(self) -> int:
        with self._log.open("ab") as log:
            self.proc = subprocess.Popen(
                self._command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        try:
            line = read_until(self.proc, READY_LINE, 60)[-1]
        except AssertionError as exc:
            self.stop()
            raise AssertionError(f"{exc}\nits stderr:\n{self._log.read_text()}") from None
        self.port = int(line.rsplit(":", 1)[1])
        return self.port

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)  # at once: no drain
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@dataclass
class Gateway:
    config: Config
    port: int
    upstreams: Mapping[str, RecordingUpstream]
    envoy: EnvoyProcess
    server: ServerThread | ServerProcess
    stack: list[object] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def clear(self) -> None:
        for upstream in self.upstreams.values():
            upstream.clear()

    def stats(self, prefix: str) -> dict[str, int]:
        """Envoy's counters whose names start with ``prefix``, from its admin API."""
        url = f"{self.envoy.admin_url}/stats?format=json&filter=^{prefix}"
        with urllib.request.urlopen(url, timeout=5) as response:
            data = json.load(response)
        return {
            s["name"]: s["value"]
            for s in data["stats"]
            if "name" in s and isinstance(s.get("value"), int)
        }


def start_gateway(
    config_text: str,
    tmp: Path,
    upstreams: Mapping[str, RecordingUpstream],
    *,
    envoy_log: Path | None = None,
    watch: bool = False,
    router_factory: RouterFactory = build_router,
    server_process: bool = False,
    serve_args: Sequence[str] = (),
) -> Gateway:
    """Start Envoy and the ext_proc server for ``config_text``; the caller stops them
    with ``stop_gateway`` (fixtures do it in a ``finally``). ``envoy_log`` captures
    Envoy's output (access log included) instead of passing it through;
    ``router_factory`` replaces the configured preference router (a scripted one).
    ``server_process`` runs ``archway serve`` (with ``serve_args``) instead, which
    watches its config as a user's does."""
    path = tmp / "config.yaml"
    path.write_text(config_text)
    config = load_config(path)
    server: ServerThread | ServerProcess
    if server_process:
        if router_factory is not build_router:
            raise ValueError("a scripted router runs only in the test's own process")
        server = ServerProcess(path, tmp / "serve.log", *serve_args)
    else:
        server = ServerThread(config, watch=watch, router_factory=router_factory)
    # Always to a file, so a failed start reports Envoy's own words.
    envoy = EnvoyProcess(output=envoy_log or tmp / "envoy.log")
    try:
        ext_port = server.start()
        envoy.start(render_bootstrap(config, ext_proc_host="127.0.0.1", ext_proc_port=ext_port))
        envoy.wait_ready(30.0)
        (host_port,) = envoy.listener_addresses().values()
        return Gateway(config, host_port[1], upstreams, envoy, server)
    except BaseException:
        envoy.stop()
        server.stop()
        raise


def stop_gateway(gateway: Gateway) -> None:
    gateway.envoy.stop()
    gateway.server.stop()


@contextlib.contextmanager
def echo_gateway(
    config_text: str,
    tmp: Path,
    names: Sequence[str] = ("openai", "anthropic"),
    *,
    router_factory: RouterFactory = build_router,
    server_process: bool = False,
    **fields: object,
) -> Iterator[Gateway]:
    """A gateway for ``config_text`` in front of one echo upstream per name in
    ``names``. The text is formatted with each upstream's base URL under its
    name, and with ``fields``. Everything is stopped on exit."""
    upstreams = {n: EchoUpstream(name=n).start() for n in names}
    try:
        text = config_text.format(**{n: u.base_url for n, u in upstreams.items()}, **fields)
        gateway = start_gateway(
            text, tmp, upstreams, router_factory=router_factory, server_process=server_process
        )
        try:
            yield gateway
        finally:
            stop_gateway(gateway)
    finally:
        for upstream in upstreams.values():
            upstream.stop()
