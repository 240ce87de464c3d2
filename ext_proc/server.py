"""The gRPC ext_proc server: one ``RequestProcessor`` per Envoy stream.

Two transports serve the same processor. The default is ``h2grpc``, a small
HTTP/2 server on the event loop that costs a fraction of grpcio's CPU per
stream (see that module). ``ARCHWAY_GRPC_SERVER=grpcio`` selects grpcio's
``grpc.aio`` server instead, as a fallback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    ProcessingRequest,
    ProcessingResponse,
)
from google.protobuf.message import DecodeError

from ext_proc.config import Config
from ext_proc.h2grpc import GrpcError, H2GrpcServer, StreamStatus
from ext_proc.processor import RequestProcessor
from ext_proc.resolve import RoutingTable, build_routing_table

__all__ = [
    "GRPC_SERVER_ENV",
    "PROCESS_PATH",
    "ExternalProcessor",
    "RunningServer",
    "serve_forever",
    "start_server",
]

GRPC_SERVER_ENV = "ARCHWAY_GRPC_SERVER"
"""``h2`` (the default) or ``grpcio``."""

PROCESS_PATH = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"

log = logging.getLogger("archway.server")

# Headroom over the body limit for the headers and protobuf framing around it.
_MESSAGE_OVERHEAD = 1024 * 1024


class ExternalProcessor(ext_proc_grpc.ExternalProcessorServicer):
    """``envoy.service.ext_proc.v3.ExternalProcessor``, routing LLM requests."""

    def __init__(self, table: RoutingTable) -> None:
        self.table = table

    async def Process(
        self,
        request_iterator: AsyncIterator[ProcessingRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[ProcessingResponse]:
        processor = RequestProcessor(self.table)
        async for request in request_iterator:
            yield await processor.handle(request)


class _ExtProcStream:
    """One ext_proc stream on the ``h2grpc`` transport: bytes in, bytes out."""

    __slots__ = ("_processor",)

    def __init__(self, table: RoutingTable) -> None:
        self._processor = RequestProcessor(table)

    async def handle(self, message: bytes) -> bytes:
        try:
            request = ProcessingRequest.FromString(message)
        except DecodeError:
            raise GrpcError(StreamStatus.INVALID_ARGUMENT, "not a ProcessingRequest") from None
        response = await self._processor.handle(request)
        return response.SerializeToString()


class _Stoppable(Protocol):
    async def stop(self, grace: float | None) -> None: ...


@dataclass
class RunningServer:
    server: _Stoppable
    servicer: ExternalProcessor
    """Holds the routing table; each new stream, on either transport, takes
    the table it holds then."""
    host: str
    port: int

    async def stop(self, grace_s: float = 2.0) -> None:
        await self.server.stop(grace_s)


def _message_limit(config: Config) -> int:
    # A buffered body of up to max_request_body_bytes must fit in one message,
    # both ways (grpcio's default limit is 4 MiB).
    return config.gateway.max_request_body_bytes + _MESSAGE_OVERHEAD


def server_options(config: Config, *, reuse_port: bool = False) -> list[tuple[str, int]]:
    limit = _message_limit(config)
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        # grpcio shares a port by default; only workers should.
        ("grpc.so_reuseport", int(reuse_port)),
    ]


async def start_server(
    config: Config,
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    own_port: int | None = None,
) -> RunningServer:
    """Start serving on ``host:port`` (port 0 picks a free one).

    ``reuse_port`` lets several worker processes listen on one port
    (``SO_REUSEPORT``): the kernel spreads Envoy's connections over them.
    ``own_port`` is a second port for this process alone (also with
    ``SO_REUSEPORT``, as its supervisor holds it), which ``archway up`` gives
    Envoy so that it can balance the workers itself.
    """
    servicer = ExternalProcessor(build_routing_table(config))
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if os.environ.get(GRPC_SERVER_ENV, "h2") == "grpcio":
        server = grpc.aio.server(options=server_options(config, reuse_port=reuse_port))
        ext_proc_grpc.add_ExternalProcessorServicer_to_server(servicer, server)
        bound = server.add_insecure_port(target)
        if bound == 0:
            raise OSError(f"cannot listen on {target} (address in use or not available)")
        if own_port is not None:
            own = f"[{host}]:{own_port}" if ":" in host else f"{host}:{own_port}"
            if server.add_insecure_port(own) == 0:
                raise OSError(f"cannot listen on {own} (address in use or not available)")
        await server.start()
        running = RunningServer(server, servicer, host, bound)
    else:
        h2 = H2GrpcServer(
            PROCESS_PATH,
            lambda: _ExtProcStream(servicer.table),
            max_message_bytes=_message_limit(config),
        )
        try:
            bound = await h2.start(host, port, reuse_port=reuse_port)
            if own_port is not None:
                await h2.start(host, own_port, reuse_port=True)
        except OSError as exc:
            raise OSError(f"cannot listen on {target}: {exc.strerror or exc}") from None
        running = RunningServer(h2, servicer, host, bound)
    log.info("ext_proc server listening on %s:%d", host, bound)
    return running


async def serve_forever(
    config: Config,
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    own_port: int | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM, then drain briefly and stop."""
    running = await start_server(config, host, port, reuse_port=reuse_port, own_port=own_port)
    print(f"archway ext_proc server listening on {host}:{running.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await running.stop()
