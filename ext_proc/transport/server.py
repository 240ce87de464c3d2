"""Listening and accepting: TCP, Unix domain sockets and TLS with ALPN h2,
the per-worker connection cap, backing off when out of file descriptors, and
the sweep that closes connections past their timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import ssl
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

from ext_proc.transport.connection import Connection, Shared
from ext_proc.transport.grpc import HandlerFactory
from ext_proc.transport.limits import Limits, LogBudget

__all__ = ["DEFAULT_MAX_CONCURRENT_STREAMS", "H2GrpcServer", "tls_context"]

log = logging.getLogger("archway.h2grpc")
_accept_log = LogBudget(log, per_minute=6)

DEFAULT_MAX_CONCURRENT_STREAMS = Limits.max_concurrent_streams
_BACKLOG = 1024
_ACCEPT_BATCH = 64
"""Connections taken per readiness event: one listener cannot hold the loop."""
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_BACKOFF_MIN_S, _BACKOFF_MAX_S = 0.05, 1.0


def tls_context(cert_path: str | Path, key_path: str | Path) -> ssl.SSLContext:
    """A server context for gRPC over TLS: TLS 1.2 or later, ALPN ``h2`` only."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert_path), str(key_path))
    context.set_alpn_protocols(["h2"])
    return context


class _Listener:
    """One listening socket, accepted from by the loop's reader callback: an
    accept that fails for want of descriptors backs off (and makes room)
    instead of spinning on a socket that stays readable."""

    def __init__(
        self, server: H2GrpcServer, sock: socket.socket, tls: ssl.SSLContext | None
    ) -> None:
        self._server = server
        self._sock = sock
        self._tls = tls
        self._loop = asyncio.get_running_loop()
        self._backoff = 0.0
        self._retry: asyncio.TimerHandle | None = None
        self._loop.add_reader(sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._pause(exc)
                else:
                    _accept_log.warning("accept failed on the ext_proc listener: %s", exc)
                return
            self._server._accepted(conn, self._tls)
        self._backoff = 0.0

    def _pause(self, exc: OSError) -> None:
        self._loop.remove_reader(self._sock.fileno())
        made_room = self._server._make_room()
        self._backoff = (
            _BACKOFF_MIN_S
            if made_room
            else min(_BACKOFF_MAX_S, 2 * self._backoff or _BACKOFF_MIN_S)
        )
        _accept_log.warning(
            "ext_proc listener out of %s: pausing accepts for %.2fs (raise `ulimit -n`)",
            "file descriptors" if exc.errno in (errno.EMFILE, errno.ENFILE) else "memory",
            self._backoff,
        )
        self._retry = self._loop.call_later(self._backoff, self._resume)

    def _resume(self) -> None:
        self._retry = None
        if self._sock.fileno() >= 0:
            self._loop.add_reader(self._sock.fileno(), self._on_readable)

    def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self._sock.fileno())
        if self._sock.family == socket.AF_UNIX:
            path = self._sock.getsockname()
            with contextlib.suppress(OSError):
                if isinstance(path, str) and path and stat.S_ISSOCK(os.stat(path).st_mode):
                    os.unlink(path)
        self._sock.close()


SHRINK_AFTER = 64
"""Connections that must have closed before ``on_shrink`` runs."""


class H2GrpcServer:
    """Serves gRPC methods by path (e.g.
    ``/envoy.service.ext_proc.v3.ExternalProcessor/Process``) on TCP or Unix
    sockets, in cleartext or TLS. Each stream gets a handler from its method's
    factory, which sees the stream's request headers; a unary method is a
    stream of one message."""

    def __init__(
        self,
        handlers: Mapping[str, HandlerFactory],
        *,
        max_message_bytes: int,
        max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS,
        limits: Limits | None = None,
        on_shrink: Callable[[], object] | None = None,
    ) -> None:
        """``on_shrink``: called after many connections closed (half of the most
        open since the last call, and at least ``SHRINK_AFTER``), to hand freed
        memory back to the system; the transport itself knows no allocator."""
        if limits is None:
            limits = Limits(max_concurrent_streams=max_concurrent_streams)
        elif max_concurrent_streams != DEFAULT_MAX_CONCURRENT_STREAMS:
            raise ValueError("give max_concurrent_streams in limits, not both")
        self._shared = Shared(
            {path.encode(): factory for path, factory in handlers.items()},
            max_message_bytes,
            limits,
        )
        self._listeners: list[_Listener] = []
        self._handshakes: set[asyncio.Task[object]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._on_shrink = on_shrink
        self._peak = 0
        """The most sockets open at once since ``on_shrink`` last ran."""
        self._waiting: dict[int, tuple[socket.socket, float]] = {}
        """Plain sockets accepted and not yet readable, oldest first, with when:
        held bare (a socket and a reader) and made a transport and a
        ``Connection`` only once a byte arrives, so that silent peers cost a
        few hundred bytes each and leave no fragmented heap behind."""

    @property
    def limits(self) -> Limits:
        return self._shared.limits

    def open_connections(self) -> int:
        """Connections open now, those that have sent nothing yet or are in
        their TLS handshake included: what the connection cap counts."""
        return len(self._shared.connections) + len(self._waiting) + len(self._handshakes)

    async def start(
        self,
        host: str,
        port: int,
        *,
        reuse_port: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> int:
        """Listen on ``host:port`` and return the bound port (``port`` 0 picks a
        free one). Each call adds one more address to serve on."""
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        addresses = list(dict.fromkeys((family, address) for family, *_, address in infos))
        bound = port
        socks: list[socket.socket] = []
        try:
            for family, address in addresses:
                sock = socket.socket(family, socket.SOCK_STREAM)
                socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6 and len(addresses) > 1:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((address[0], bound, *address[2:]))
                bound = sock.getsockname()[1]
        except OSError:
            for sock in socks:
                sock.close()
            raise
        for sock in socks:
            self._listen(sock, tls)
        return int(bound)

    async def start_unix(
        self, path: str | Path, *, tls: ssl.SSLContext | None = None, mode: int | None = None
    ) -> str:
        """Listen on a Unix domain socket at ``path``; a stale socket file there
        (not any other file) is replaced. ``mode``: the socket file's permissions
        (connecting needs write access), set before it listens."""
        path = str(path)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            if mode is not None:
                os.chmod(path, mode)
        except OSError:
            sock.close()
            raise
        self._listen(sock, tls)
        return path

    def _listen(self, sock: socket.socket, tls: ssl.SSLContext | None) -> None:
        sock.listen(_BACKLOG)
        sock.setblocking(False)
        self._listeners.append(_Listener(self, sock, tls))
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    def _accepted(self, sock: socket.socket, tls: ssl.SSLContext | None) -> None:
        shared = self._shared
        if shared.closing:
            sock.close()
            return
        # The cap counts a socket from its first moment: waiting for a byte,
        # in its TLS handshake, or a connection.
        cap = shared.limits.max_connections
        if self.open_connections() >= cap and not self._make_room():
            _accept_log.warning("ext_proc server at its limit of %d connections: refusing one", cap)
            sock.close()
            return
        sock.setblocking(False)
        if tls is None:
            self._wait_for_bytes(sock)
        else:
            self._start(sock, tls)
        self._peak = max(self._peak, self.open_connections())

    def _wait_for_bytes(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        fd = sock.fileno()
        self._waiting[fd] = (sock, loop.time())
        loop.add_reader(fd, self._first_bytes, fd)

    def _first_bytes(self, fd: int) -> None:
        entry = self._waiting.get(fd)
        if entry is None:
            return
        sock = entry[0]
        try:
            peeked = sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            peeked = b""
        self._unwait(fd)
        if not peeked:
            sock.close()  # gone without a byte: nothing to answer
            return
        self._start(sock, None)

    def _unwait(self, fd: int) -> socket.socket:
        sock, _ = self._waiting.pop(fd)
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(fd)
        return sock

    def _start(self, sock: socket.socket, tls: ssl.SSLContext | None) -> None:
        shared = self._shared
        loop = asyncio.get_running_loop()
        task: asyncio.Task[object] = loop.create_task(
            loop.connect_accepted_socket(
                lambda: Connection(shared),
                sock,
                ssl=tls,
                ssl_handshake_timeout=shared.limits.handshake_timeout_s if tls else None,
            )
        )
        self._handshakes.add(task)
        task.add_done_callback(self._handshake_done)

    def _handshake_done(self, task: asyncio.Task[object]) -> None:
        self._handshakes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # A failed TLS handshake or a peer gone at once: its socket is closed.
            log.debug("ext_proc connection setup failed: %s", task.exception())

    def _make_room(self) -> bool:
        """Close one connection that loses no request by closing: the oldest
        that sent nothing, else without a preface, else without an open stream."""
        if self._waiting:
            self._unwait(next(iter(self._waiting))).close()
            return True
        fallback: Connection | None = None
        for conn in self._shared.connections:
            if not conn.evictable:
                continue
            if not conn.preface_seen:
                conn.close("evicted: the server is at its connection limit")
                return True
            if fallback is None:
                fallback = conn
        if fallback is None:
            return False
        fallback.close("evicted: the server is at its connection limit")
        return True

    async def _sweep(self) -> None:
        limits = self._shared.limits
        shortest = min(limits.handshake_timeout_s, limits.idle_timeout_s, limits.stall_timeout_s)
        tick = min(1.0, max(0.05, shortest / 4))
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            for conn in list(self._shared.connections):
                reason = conn.expired(now)
                if reason is not None:
                    conn.close(reason)
            silent_since = now - limits.handshake_timeout_s
            while self._waiting:
                fd, (_, since) = next(iter(self._waiting.items()))
                if since > silent_since:
                    break
                self._unwait(fd).close()
            self._note_count(self.open_connections())

    def _note_count(self, count: int) -> None:
        if self._peak - count >= max(SHRINK_AFTER, count):
            self._peak = count
            if self._on_shrink is not None:
                self._on_shrink()

    async def stop(self, grace: float | None) -> None:
        """Stop accepting, let streams in flight finish for up to ``grace`` seconds, then close."""
        self._shared.closing = True
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        for task in list(self._handshakes):
            task.cancel()
        for fd in list(self._waiting):
            self._unwait(fd).close()
        connections = list(self._shared.connections)
        for conn in connections:
            conn.shutdown()
        if connections and grace:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(c.wait_idle() for c in connections)), grace)
        for conn in connections:
            conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        # Let the transports run their close callbacks before the loop goes.
        await asyncio.sleep(0)
