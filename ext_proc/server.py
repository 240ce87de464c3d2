"""The gRPC ext_proc server: one ``RequestProcessor`` per Envoy stream."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    ProcessingRequest,
    ProcessingResponse,
)

from ext_proc.config import Config
from ext_proc.processor import RequestProcessor
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
        processor = RequestProcessor(self.table, self.router)
        async for request in request_iterator:
            yield await processor.handle(request)


@dataclass
class RunningServer:
    server: grpc.aio.Server
    servicer: ExternalProcessor
    host: str
    port: int

    async def stop(self, grace_s: float = 2.0) -> None:
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
    router_factory: Callable[[Config], ConfiguredRouter | None] = build_router,
) -> RunningServer:
    """Start serving on ``host:port`` (port 0 picks a free one).

    The server owns the preference router: ``router_factory`` builds it before
    the port opens (so no request meets a half-loaded model) and ``stop`` closes
    it. Raises ``RouterUnavailableError`` when the configured router cannot load.
    """
    # Loading a model takes seconds of CPU: off the event loop.
    router = await asyncio.to_thread(router_factory, config)
    server = grpc.aio.server(options=server_options(config))
    servicer = ExternalProcessor(build_routing_table(config), router)
    ext_proc_grpc.add_ExternalProcessorServicer_to_server(servicer, server)
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    bound = server.add_insecure_port(target)
    if bound == 0:
        if router is not None:
            await router.close()
        raise OSError(f"cannot listen on {target} (address in use or not available)")
    await server.start()
    log.info("ext_proc server listening on %s:%d", host, bound)
    return RunningServer(server, servicer, host, bound)


async def serve_forever(config: Config, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM, then drain briefly and stop."""
    running = await start_server(config, host, port)
    print(f"archway ext_proc server listening on {host}:{running.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await running.stop()
