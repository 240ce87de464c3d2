"""The gRPC ext_proc server: one processor per Envoy stream, chosen by its role.

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
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    ProcessingRequest,
    ProcessingResponse,
)
from google.protobuf.message import DecodeError

from ext_proc.config import Config
from ext_proc.headers import UPSTREAM_PHASE_KEY
from ext_proc.router.factory import build_router
from ext_proc.router.service import ConfiguredRouter
from ext_proc.routing.resolve import RoutingTable, build_routing_table
from ext_proc.server.allocator import give_back_free_memory, keep_large_buffers
from ext_proc.server.attempt import AttemptProcessor
from ext_proc.server.conversations import Conversations
from ext_proc.server.health import (
    DEFAULT_DRAIN_S,
    HEALTH_CHECK_PATH,
    HealthCheckStream,
    ServerHealth,
)
from ext_proc.server.processor import StreamProcessor, StreamRole
from ext_proc.server.reload import ConfigReloader
from ext_proc.server.routing_stream import RoutingProcessor
from ext_proc.server.signals import STOP_SIGNALS, SignalQueue
from ext_proc.server.translation_stream import TranslationProcessor
from ext_proc.state import open_store
from ext_proc.telemetry import tracing
from ext_proc.transport import GrpcError, H2GrpcServer, StreamStatus, tls_context

__all__ = [
    "GRPC_SERVER_ENV",
    "PROCESS_PATH",
    "ExternalProcessor",
    "RunningServer",
    "TlsFiles",
    "UnixSocketError",
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

    def __init__(
        self,
        table: RoutingTable,
        router: ConfiguredRouter | None = None,
        conversations: Conversations | None = None,
    ) -> None:
        self.table = table
        self.router = router
        self.conversations = conversations or Conversations(None)
        """Responses conversation state: one store per process, for every stream."""

    async def Process(
        self,
        request_iterator: AsyncIterator[ProcessingRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[ProcessingResponse]:
        metadata = context.invocation_metadata() or ()
        processor = self.processor(_role(metadata), metadata)
        async for request in request_iterator:
            yield await processor.handle(request)

    def new_stream(self, headers: Sequence[tuple[bytes, bytes]]) -> _ExtProcStream:
        """A stream on the ``h2grpc`` transport, from its request headers."""
        role = StreamRole.ROUTING
        for key, value in headers:
            if key == _PHASE_KEY_BYTES:
                role = _ROLES_BY_BYTES.get(value, StreamRole.ROUTING)
                break
        metadata = ((k.decode("latin-1"), v.decode("latin-1")) for k, v in headers)
        return _ExtProcStream(self.processor(role, metadata))

    def processor(self, role: StreamRole, metadata: Iterable[tuple[str, Any]]) -> StreamProcessor:
        """The processor for a new stream of ``role``."""
        # Envoy's span for this call, when it traces: the parent of the request's span.
        trace_context = tracing.stream_trace_context(metadata)
        if role is StreamRole.TRANSLATION:
            return TranslationProcessor(
                self.table, trace_context=trace_context, conversations=self.conversations
            )
        if role is StreamRole.ATTEMPT:
            return AttemptProcessor(self.table, trace_context=trace_context)
        return RoutingProcessor(
            self.table, self.router, trace_context=trace_context, conversations=self.conversations
        )


_PHASE_KEY_BYTES = UPSTREAM_PHASE_KEY.encode()
_ROLES_BY_BYTES = {role.value.encode(): role for role in StreamRole}


def _role(metadata: Iterable[tuple[str, Any]]) -> StreamRole:
    """The stream's role, from its gRPC metadata; untagged streams are routing."""
    for key, value in metadata:
        if key == UPSTREAM_PHASE_KEY:
            try:
                return StreamRole(value)
            except ValueError:
                return StreamRole.ROUTING
    return StreamRole.ROUTING


class _ExtProcStream:
    """One ext_proc stream on the ``h2grpc`` transport: bytes in, bytes out."""

    __slots__ = ("_processor",)

    def __init__(self, processor: StreamProcessor) -> None:
        self._processor = processor

    async def handle(self, message: bytes) -> bytes:
        try:
            request = ProcessingRequest.FromString(message)
        except DecodeError:
            raise GrpcError(StreamStatus.INVALID_ARGUMENT, "not a ProcessingRequest") from None
        response = await self._processor.handle(request)
        return response.SerializeToString()


_SOCKET_MODE = 0o660


class UnixSocketError(OSError):
    """The Unix socket could not be created (its own message names the fix)."""


@dataclass(frozen=True)
class TlsFiles:
    """The PEM certificate chain and private key the h2 transport serves TLS with."""

    cert: str
    key: str


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
        store, self.servicer.conversations.store = self.servicer.conversations.store, None
        if store is not None:
            await store.close()


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
    watch: bool = False,
    router_factory: Callable[[Config], ConfiguredRouter | None] = build_router,
    reuse_port: bool = False,
    own_port: int | None = None,
    uds: str | None = None,
    tls: TlsFiles | None = None,
) -> RunningServer:
    """Start serving on ``host:port`` (port 0 picks a free one).

    The server owns the preference router: ``router_factory`` builds it before
    the port opens (so no request meets a half-loaded model) and ``stop`` closes
    it. Raises ``RouterUnavailableError`` when the configured router cannot load.
    With ``watch``, the config file is reloaded on SIGHUP or when it changes.

    ``reuse_port`` lets several worker processes listen on one port
    (``SO_REUSEPORT``): the kernel spreads Envoy's connections over them.
    ``own_port`` is a second port for this process alone (also with
    ``SO_REUSEPORT``, as its supervisor holds it), which ``archway up`` gives
    Envoy so that it can balance the workers itself. ``uds`` also serves on
    a Unix domain socket at that path; ``tls`` serves TLS (ALPN h2) instead of
    cleartext on the TCP port.
    """
    # Loading a model takes seconds of CPU: off the event loop.
    router = await asyncio.to_thread(router_factory, config)
    store = None
    try:
        if config.state_storage is not None:
            store = await open_store(config.state_storage)
    except BaseException:
        if router is not None:
            await router.close()
        raise
    servicer = ExternalProcessor(build_routing_table(config), router, Conversations(store))
    health = ServerHealth()
    try:
        if os.environ.get(GRPC_SERVER_ENV, "h2") == "grpcio":
            if uds or tls:
                raise ValueError("--uds and TLS need the h2 transport (unset ARCHWAY_GRPC_SERVER)")
            server, bound = await _start_grpcio(
                config, servicer, health, host, port, reuse_port, own_port
            )
        else:
            server, bound = await _start_h2(
                config, servicer, health, host, port, reuse_port, own_port, uds, tls
            )
    except BaseException:
        if router is not None:
            await router.close()
        if store is not None:
            await store.close()
        raise
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


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _start_grpcio(
    config: Config,
    servicer: ExternalProcessor,
    health: ServerHealth,
    host: str,
    port: int,
    reuse_port: bool,
    own_port: int | None,
) -> tuple[_Stoppable, int]:
    server = grpc.aio.server(options=server_options(config, reuse_port=reuse_port))
    ext_proc_grpc.add_ExternalProcessorServicer_to_server(servicer, server)
    await health.attach(server)
    target = _address(host, port)
    bound = server.add_insecure_port(target)
    if bound == 0:
        raise OSError(f"cannot listen on {target} (address in use or not available)")
    if own_port is not None:
        own = _address(host, own_port)
        if server.add_insecure_port(own) == 0:
            raise OSError(f"cannot listen on {own} (address in use or not available)")
    await server.start()
    return server, bound


async def _start_h2(
    config: Config,
    servicer: ExternalProcessor,
    health: ServerHealth,
    host: str,
    port: int,
    reuse_port: bool,
    own_port: int | None,
    uds: str | None = None,
    tls_files: TlsFiles | None = None,
) -> tuple[_Stoppable, int]:
    tls = None if tls_files is None else tls_context(tls_files.cert, tls_files.key)
    h2 = H2GrpcServer(
        {
            PROCESS_PATH: servicer.new_stream,
            HEALTH_CHECK_PATH: lambda headers: HealthCheckStream(health),
        },
        max_message_bytes=_message_limit(config),
        on_shrink=give_back_free_memory,
    )
    try:
        bound = await h2.start(host, port, reuse_port=reuse_port, tls=tls)
        if own_port is not None:
            await h2.start(host, own_port, reuse_port=True, tls=tls)
    except OSError as exc:
        await h2.stop(0)
        raise OSError(f"cannot listen on {_address(host, port)}: {exc.strerror or exc}") from None
    if uds is not None:
        try:
            # Group access: in the sidecar setups Envoy runs as another user of
            # the socket's group (the pod's fsGroup, compose's shared gid).
            await h2.start_unix(uds, tls=tls, mode=_SOCKET_MODE)
        except OSError as exc:
            await h2.stop(0)
            raise UnixSocketError(
                f"cannot listen on the Unix socket {uds}: {exc.strerror or exc}; "
                "check that its directory exists and is writable"
            ) from None
    return h2, bound


async def serve_forever(
    config: Config,
    host: str,
    port: int,
    *,
    drain_s: float = DEFAULT_DRAIN_S,
    reuse_port: bool = False,
    own_port: int | None = None,
    uds: str | None = None,
    tls: TlsFiles | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM, then stop. SIGTERM (how Kubernetes and
    Docker stop a container) first drains for ``drain_s``; Ctrl-C does not wait."""
    # A body of up to the limit is copied several times per request: keep those
    # buffers in the heap instead of mapping fresh pages for each copy.
    keep_large_buffers(2 * _message_limit(config))
    running = await start_server(
        config, host, port, watch=True, reuse_port=reuse_port, own_port=own_port, uds=uds, tls=tls
    )
    # SIGHUP is the reloader's (installed by start_server's watch). Handlers
    # before the ready line: a signal sent as soon as it shows is ours.
    with SignalQueue(*STOP_SIGNALS) as received:
        if uds is not None:
            print(f"archway ext_proc server listening on unix:{uds}", flush=True)
        print(f"archway ext_proc server listening on {host}:{running.port}", flush=True)
        if await received.get() is signal.SIGTERM and drain_s > 0:
            # Still answering, but health says NOT_SERVING: Envoy's health check and
            # Kubernetes move new requests elsewhere before the server stops.
            await running.health.draining()
            log.info("draining: health says NOT_SERVING for %gs before stopping", drain_s)
            # A second signal cuts the drain short.
            await received.get_within(drain_s)
        await running.stop()
