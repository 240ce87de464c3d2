"""The gRPC ext_proc server: one ``RequestProcessor`` per Envoy stream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    ProcessingRequest,
    ProcessingResponse,
)

from ext_proc import tracing
from ext_proc.config import Config
from ext_proc.failover import AttemptProcessor
from ext_proc.headers import UPSTREAM_PHASE, UPSTREAM_PHASE_KEY
from ext_proc.health import DEFAULT_DRAIN_S, ServerHealth
from ext_proc.processor import RequestProcessor
from ext_proc.reload import ConfigReloader
from ext_proc.resolve import RoutingTable, build_routing_table
from ext_proc.router.factory import build_router
from ext_proc.router.service import ConfiguredRouter

__all__ = ["ExternalProcessor", "RunningServer", "serve_forever", "start_server"]

log = logging.getLogger("archway.server")

# Headroom over the body limit for the headers and protobuf framing around it.
_MESSAGE_OVERHEAD = 1024 * 1024


class ExternalProcessor(ext_proc_grpc.ExternalProcessorServicer):
    """``envoy.service.ext_proc.v3.ExternalProcessor``, routing LLM requests."""

    def __init__(self, table: RoutingTable, router: ConfiguredRouter | None = None) -> None:
        self.table = table
        self.router = router

    async def Process(
        self,
        request_iterator: AsyncIterator[ProcessingRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[ProcessingResponse]:
        processor: RequestProcessor | AttemptProcessor
        metadata = context.invocation_metadata() or ()
        # Envoy's span for this call, when it traces: the parent of the request's span.
        trace_context = tracing.stream_trace_context(metadata)
        if (UPSTREAM_PHASE_KEY, UPSTREAM_PHASE) in metadata:
            processor = AttemptProcessor(self.table, trace_context=trace_context)
        else:
            processor = RequestProcessor(self.table, self.router, trace_context=trace_context)
        async for request in request_iterator:
            yield await processor.handle(request)


@dataclass
class RunningServer:
    server: grpc.aio.Server
    servicer: ExternalProcessor
    host: str
    port: int
    health: ServerHealth
    reloader: ConfigReloader | None = None

    async def stop(self, grace_s: float = 2.0) -> None:
        if self.reloader is not None:
            await self.reloader.stop()
        await self.health.draining()
        await self.server.stop(grace_s)
        # After the streams drain: no request is left waiting on the router.
        router, self.servicer.router = self.servicer.router, None
        if router is not None:
            await router.close()


def server_options(config: Config) -> list[tuple[str, int]]:
    # grpc-python refuses messages over 4 MiB by default; a buffered body of up
    # to max_request_body_bytes must fit in one message, both ways.
    limit = config.gateway.max_request_body_bytes + _MESSAGE_OVERHEAD
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
    ]


async def start_server(
    config: Config,
    host: str,
    port: int,
    *,
    watch: bool = False,
    router_factory: Callable[[Config], ConfiguredRouter | None] = build_router,
) -> RunningServer:
    """Start serving on ``host:port`` (port 0 picks a free one).

    The server owns the preference router: ``router_factory`` builds it before
    the port opens (so no request meets a half-loaded model) and ``stop`` closes
    it. Raises ``RouterUnavailableError`` when the configured router cannot load.
    With ``watch``, the config file is reloaded on SIGHUP or when it changes.
    """
    # Loading a model takes seconds of CPU: off the event loop.
    router = await asyncio.to_thread(router_factory, config)
    server = grpc.aio.server(options=server_options(config))
    servicer = ExternalProcessor(build_routing_table(config), router)
    ext_proc_grpc.add_ExternalProcessorServicer_to_server(servicer, server)
    health = ServerHealth()
    await health.attach(server)
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    bound = server.add_insecure_port(target)
    if bound == 0:
        if router is not None:
            await router.close()
        raise OSError(f"cannot listen on {target} (address in use or not available)")
    await server.start()
    await health.serving()
    log.info("ext_proc server listening on %s:%d", host, bound)
    reloader = None
    if watch and config.source is not None:

        def apply(new: Config) -> None:
            # New streams pick up the new table; streams in flight keep theirs.
            servicer.table = build_routing_table(new)

        reloader = ConfigReloader(config.source, config, apply)
        reloader.start(install_sighup=threading.current_thread() is threading.main_thread())
    return RunningServer(server, servicer, host, bound, health, reloader)


async def serve_forever(
    config: Config, host: str, port: int, *, drain_s: float = DEFAULT_DRAIN_S
) -> None:
    """Serve until SIGINT or SIGTERM, then stop. SIGTERM (how Kubernetes and
    Docker stop a container) first drains for ``drain_s``; Ctrl-C does not wait."""
    running = await start_server(config, host, port, watch=True)
    print(f"archway ext_proc server listening on {host}:{running.port}", flush=True)
    received: asyncio.Queue[signal.Signals] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, received.put_nowait, sig)
    if await received.get() is signal.SIGTERM and drain_s > 0:
        # Still answering, but health says NOT_SERVING: Envoy's health check and
        # Kubernetes move new requests elsewhere before the server stops.
        await running.health.draining()
        log.info("draining: health says NOT_SERVING for %gs before stopping", drain_s)
        with contextlib.suppress(TimeoutError):
            # A second signal cuts the drain short.
            await asyncio.wait_for(received.get(), drain_s)
    await running.stop()
