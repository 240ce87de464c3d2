"""The standard gRPC health service (``grpc.health.v1.Health``) of the ext_proc server.

Three callers ask it: Envoy's active health check of its ext_proc cluster,
Kubernetes' ``grpc`` readiness and liveness probes, and ``archway up`` before it
says the gateway is ready. Two names answer: ``""`` (the server as a whole) and
``EXT_PROC_SERVICE``. Both say NOT_SERVING until the server listens and again
from the moment it starts draining, so load balancers move away from a server
that is about to stop while it still answers the requests already sent to it.
"""

from __future__ import annotations

import asyncio
import time

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

__all__ = [
    "DEFAULT_DRAIN_S",
    "EXT_PROC_SERVICE",
    "HEALTH_CHECK_PATH",
    "HEALTH_SERVICES",
    "HealthCheckStream",
    "ServerHealth",
    "wait_until_serving",
]

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
"""The full name of the gRPC service Envoy calls; probes name it to ask about routing."""

HEALTH_SERVICES = ("", EXT_PROC_SERVICE)

DEFAULT_DRAIN_S = 5.0
"""How long a draining server keeps answering while saying NOT_SERVING. It must
outlast Envoy's health check noticing (see ``bootstrap.EXT_PROC_HEALTH_CHECK``)
and Kubernetes taking the pod out of its endpoints."""

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_POLL_INTERVAL_S = 0.05


class ServerHealth:
    """The health servicer and the server's side of it: serving, then draining."""

    def __init__(self) -> None:
        # grpcio's asyncio servicer: it answers Watch streams too, and
        # enter_graceful_shutdown pins every name to NOT_SERVING for good.
        self.servicer = health.aio.HealthServicer()
        self.status = _NOT_SERVING
        """What Check answers on the h2grpc transport (grpcio's servicer keeps its own)."""

    async def attach(self, server: grpc.aio.Server) -> None:
        """Serve health on ``server``, saying NOT_SERVING until ``serving()``."""
        for service in HEALTH_SERVICES:
            await self.servicer.set(service, _NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

    async def serving(self) -> None:
        self.status = _SERVING
        for service in HEALTH_SERVICES:
            await self.servicer.set(service, _SERVING)

    async def draining(self) -> None:
        self.status = _NOT_SERVING
        await self.servicer.enter_graceful_shutdown()


HEALTH_CHECK_PATH = "/grpc.health.v1.Health/Check"


class HealthCheckStream:
    """``grpc.health.v1.Health/Check`` on the h2grpc transport: one request, one
    answer. Envoy's cluster health check and Kubernetes' grpc probes ask it."""

    __slots__ = ("_health",)

    def __init__(self, server_health: ServerHealth) -> None:
        self._health = server_health

    async def handle(self, message: bytes) -> bytes:
        from ext_proc.transport import GrpcError, StreamStatus

        try:
            service = health_pb2.HealthCheckRequest.FromString(message).service
        except DecodeError:
            raise GrpcError(StreamStatus.INVALID_ARGUMENT, "not a HealthCheckRequest") from None
        if service not in HEALTH_SERVICES:
            raise GrpcError(StreamStatus.NOT_FOUND, f"unknown service {service!r}")
        return health_pb2.HealthCheckResponse(status=self._health.status).SerializeToString()


async def wait_until_serving(
    target: str, *, service: str = EXT_PROC_SERVICE, timeout_s: float = 10.0
) -> None:
    """Return once the health service at ``target`` (``host:port``) says SERVING
    for ``service``; raise ``TimeoutError`` naming the last answer otherwise."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"the ext_proc health service at {target} did not say SERVING "
                    f"for {service or 'the server'!r} within {timeout_s:g}s (last: {last})"
                )
            try:
                response = await stub.Check(
                    health_pb2.HealthCheckRequest(service=service),
                    timeout=min(remaining, 1.0),
                )
            except grpc.aio.AioRpcError as exc:
                last = exc.code().name
            else:
                if response.status == _SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            await asyncio.sleep(_POLL_INTERVAL_S)
