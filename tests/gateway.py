"""A whole gateway on loopback for end-to-end tests: fake upstreams, the ext_proc
server on its own event loop thread, and a real Envoy."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ext_proc.bootstrap import render_bootstrap
from ext_proc.config import Config, load_config
from ext_proc.echo import EchoUpstream
from ext_proc.envoy_process import EnvoyProcess
from ext_proc.router.factory import build_router
from ext_proc.router.service import ConfiguredRouter
from ext_proc.server import RunningServer, start_server

RouterFactory = Callable[[Config], ConfiguredRouter | None]


class ServerThread:
    """The grpc.aio ext_proc server, run on an event loop in a background thread."""

    def __init__(self, config: Config, router_factory: RouterFactory = build_router) -> None:
        self._config = config
        self._router_factory = router_factory
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.running: RunningServer | None = None

    def start(self) -> int:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(
            start_server(self._config, "127.0.0.1", 0, router_factory=self._router_factory),
            self._loop,
        )
        self.running = fut.result(timeout=60)
        return self.running.port

    def stop(self) -> None:
        if self.running is not None:
            asyncio.run_coroutine_threadsafe(self.running.stop(0.5), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@dataclass
class Gateway:
    config: Config
    port: int
    upstreams: dict[str, EchoUpstream]
    envoy: EnvoyProcess
    server: ServerThread
    stack: list[object] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def clear(self) -> None:
        for upstream in self.upstreams.values():
            upstream.clear()


def start_gateway(
    config_text: str,
    tmp: Path,
    upstreams: dict[str, EchoUpstream],
    *,
    router_factory: RouterFactory = build_router,
) -> Gateway:
    """Start Envoy and the ext_proc server for ``config_text``; the caller stops them
    with ``stop_gateway`` (fixtures do it in a ``finally``). ``router_factory``
    replaces the configured preference router (a scripted one, say)."""
    path = tmp / "config.yaml"
    path.write_text(config_text)
    config = load_config(path)
    server = ServerThread(config, router_factory)
    envoy = EnvoyProcess()
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
