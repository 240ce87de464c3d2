"""Several ext_proc worker processes on one port, supervised by their parent.

One Python process runs on one core at a time, so the ext_proc server scales
with cores by running N copies. Each worker is ``archway serve CONFIG
--workers 1 --reuse-port``: an ordinary single-process server whose socket has
``SO_REUSEPORT``, so the kernel spreads Envoy's HTTP/2 connections over the
workers. The parent holds the port for the pool's whole life (a bound socket
that never listens, so it takes no connections), which keeps a restarted
worker's port from being taken by anyone else.

Each worker also listens on a port of its own, held the same way. ``archway
up`` gives Envoy those ports as separate endpoints: Envoy then round-robins
streams over the workers from each of its threads. With only the shared port,
the kernel hashes Envoy's few long-lived connections (one per Envoy thread)
onto the workers, and two connections land on the same worker half the time,
leaving the other idle. The parent also asks each worker's gRPC health service
on that port, since only there does it reach one worker and not any of them.

Session pins and token counters must be one across the workers: with more
than one, the parent creates a SQLite file that every worker shares
(``ext_proc.state.shared.FileState``, path in ``ARCHWAY_SHARED_STATE_FILE``)
and removes it when the pool stops.

The parent restarts a worker that dies, after a delay that doubles with each
quick failure, and kills (then restarts) one that stops answering its health
check: a stopped process or a stuck event loop serves nothing but never exits.
Workers run in their own session (a terminal's Ctrl-C reaches only the parent,
which then stops them in order) and get SIGTERM from the kernel if the parent
dies, so none is ever orphaned. A worker's stderr passes through the parent:
held while it starts, so a worker that cannot start yields one line (its last)
for the parent's error, and copied through once it serves.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ext_proc.deploy.envoy_process import parent_death_prefix
from ext_proc.state.shared import SHARED_STATE_FILE_ENV

__all__ = [
    "READY_LINE",
    "HealthWatch",
    "PortInUseError",
    "WorkerError",
    "WorkerPool",
    "default_workers",
]

log = logging.getLogger("archway.workers")

READY_LINE = "archway ext_proc server listening on"
"""What a worker prints on stdout once it accepts streams."""

_MIN_BACKOFF_S = 0.5
_MAX_BACKOFF_S = 30.0
_STABLE_AFTER_S = 30.0
"""A worker that lived this long counts as healthy: the next crash restarts fast."""
_HELD_LINES = 50


_CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
_CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def default_workers(*, beside_envoy: bool = False) -> int:
    """One worker per core this process may use; half as many ``beside_envoy``.

    A container's CPU limit is a cgroup quota, invisible to the affinity mask:
    a pod limited to 2 CPUs on a 64-core node would otherwise start 64
    workers that share 2 CPUs. ``archway up`` runs Envoy on the same cores,
    and Envoy spends more CPU per request than a worker does (measured on 2
    cores: one worker beside Envoy gave 1.2x the throughput of two).
    """
    cores = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_limit()
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    if beside_envoy:
        cores //= 2
    return max(1, cores)


def cgroup_cpu_limit(
    v2: Path = _CGROUP_V2_CPU_MAX,
    v1_quota: Path = _CGROUP_V1_QUOTA,
    v1_period: Path = _CGROUP_V1_PERIOD,
) -> float | None:
    """CPUs allowed by this process's cgroup quota, or ``None`` without one."""
    try:
        quota, _, period = v2.read_text().strip().partition(" ")
        if quota == "max":
            return None
        return int(quota) / int(period or "100000")
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(v1_quota.read_text())
        period_us = int(v1_period.read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


class WorkerError(RuntimeError):
    """A worker could not be started."""


class PortInUseError(OSError):
    """Another process listens on the port asked for."""


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, never-listening ``SO_REUSEPORT`` socket that holds ``host:port``.

    ``SO_REUSEPORT`` would also share the port with another process that set
    it (a second ``archway serve``), so a fixed port is first bound alone:
    that fails while anyone else holds it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if port != 0:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise PortInUseError(exc.errno, f"{host}:{port} is in use") from None
                raise
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


@dataclass(frozen=True)
class HealthWatch:
    """How the parent tells a hung worker from a busy one."""

    interval_s: float = 1.0
    timeout_s: float = 2.0
    """Generous: a worker starved of CPU on a loaded machine still answers in time."""
    misses: int = 3
    """Consecutive unanswered checks before the worker is killed and replaced."""


class WorkerPool:
    """``count`` workers serving ``config_path`` on ``host:port`` (0: a free port)."""

    def __init__(
        self,
        config_path: Path,
        host: str,
        port: int,
        count: int,
        *,
        verbose: bool = False,
        ready_timeout_s: float = 60.0,
        drain_s: float | None = None,
        health: HealthWatch | None = HealthWatch(),
    ) -> None:
        if count < 1:
            raise ValueError("a worker pool needs at least one worker")
        self.config_path = config_path
        self.host = host
        self.count = count
        self._requested_port = port
        self._verbose = verbose
        self._ready_timeout_s = ready_timeout_s
        self._reserved: socket.socket | None = None
        self._drain_s = drain_s
        self._health = health
        self._own: list[socket.socket] = []
        self._procs: list[asyncio.subprocess.Process | None] = [None] * count
        self._serving: list[bool] = [False] * count
        self._tasks: list[asyncio.Task[None]] = []
        self._pipes: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._state_dir: Path | None = None
        self.restarts = 0
        self.hung = 0
        """Workers killed for not answering their health check."""

    @property
    def port(self) -> int:
        if self._reserved is None:
            raise WorkerError("the pool has not started")
        return int(self._reserved.getsockname()[1])

    @property
    def worker_ports(self) -> list[int]:
        """Each worker's own port."""
        return [int(sock.getsockname()[1]) for sock in self._own]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p is not None and p.returncode is None]

    def _command(self, index: int) -> list[str]:
        command = [
            sys.executable,
            "-m",
            "ext_proc.cli",
            "serve",
            str(self.config_path),
            "--address",
            self.host,
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--reuse-port",
            # The parent serves the metrics every worker writes (multiprocess mode).
            "--metrics-port",
            "off",
            "--own-port",
            str(self.worker_ports[index]),
        ]
        if self._drain_s is not None:
            command += ["--drain-seconds", str(self._drain_s)]
        if self._verbose:
            command.append("--verbose")
        return command

    async def start(self) -> int:
        """Start every worker and wait until all accept streams; returns the port."""
        self._reserved = reserve_port(self.host, self._requested_port)
        if self.count > 1 and not os.environ.get(SHARED_STATE_FILE_ENV):
            # tmpfs where there is one: the file is small, hot and disposable.
            shm = Path("/dev/shm")
            parent = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
            self._state_dir = Path(tempfile.mkdtemp(prefix="archway-state-", dir=parent))
        self._own = [reserve_port(self.host, 0) for _ in range(self.count)]
        try:
            await asyncio.gather(*(self._spawn(i) for i in range(self.count)))
        except BaseException:
            await self.stop(0, signal.SIGKILL)
            raise
        self._tasks = [
            asyncio.create_task(self._supervise(i), name=f"archway-worker-{i}")
            for i in range(self.count)
        ]
        if self._health is not None:
            self._tasks += [
                asyncio.create_task(self._watch(i, self._health), name=f"archway-watch-{i}")
                for i in range(self.count)
            ]
        return self.port

    async def _spawn(self, index: int) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self._state_dir is not None:
            env[SHARED_STATE_FILE_ENV] = str(self._state_dir / "shared.sqlite")
        self._serving[index] = False
        proc = await asyncio.create_subprocess_exec(
            *parent_death_prefix(),
            *self._command(index),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        self._procs[index] = proc
        assert proc.stdout is not None and proc.stderr is not None
        stderr = _StderrPipe(proc.stderr)
        self._keep(stderr.run())
        try:
            async with asyncio.timeout(self._ready_timeout_s):
                while True:
                    line = await proc.stdout.readline()
                    if not line:
                        code = await proc.wait()
                        await stderr.finished()
                        said = stderr.last_line()
                        raise WorkerError(
                            said.removeprefix("archway: ")
                            if said
                            else f"ext_proc worker {index} exited with status {code} while starting"
                        )
                    if line.decode(errors="replace").startswith(READY_LINE):
                        break
        except TimeoutError:
            raise WorkerError(
                f"ext_proc worker {index} was not ready after {self._ready_timeout_s:g}s; "
                "give it longer with --ready-timeout"
            ) from None
        stderr.pass_through()
        # Nothing else is expected on stdout; reading on keeps a chatty worker
        # from ever blocking on a full pipe.
        self._keep(_drain(proc.stdout))
        self._serving[index] = True
        log.debug("worker %d ready (pid %d)", index, proc.pid)

    def _keep(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._pipes.add(task)
        task.add_done_callback(self._pipes.discard)

    async def _supervise(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        started = loop.time()
        while True:
            proc = self._procs[index]
            assert proc is not None
            code = await proc.wait()
            self._serving[index] = False
            if self._stopping:
                return
            failures = 0 if loop.time() - started > _STABLE_AFTER_S else failures + 1
            delay = min(_MIN_BACKOFF_S * 2 ** max(failures - 1, 0), _MAX_BACKOFF_S)
            log.warning(
                "ext_proc worker %d (pid %d) exited with status %s; restarting in %.1fs",
                index,
                proc.pid,
                code,
                delay,
            )
            await asyncio.sleep(delay)
            if self._stopping:
                return
            started = loop.time()
            try:
                await self._spawn(index)
                self.restarts += 1
            except WorkerError as exc:
                log.error("%s", exc)

    async def _watch(self, index: int, watch: HealthWatch) -> None:
        """Kill a serving worker that stops answering; ``_supervise`` restarts it."""
        target = f"{self.host}:{self.worker_ports[index]}"
        missed = 0
        checked: asyncio.subprocess.Process | None = None
        channel: grpc.aio.Channel | None = None
        try:
            while not self._stopping:
                await asyncio.sleep(watch.interval_s)
                proc = self._procs[index]
                if proc is None or not self._serving[index] or proc.returncode is not None:
                    missed = 0
                    continue
                if proc is not checked or channel is None:
                    # A fresh channel per worker: one that saw the last worker die
                    # may be backing off and would fail checks the new one passes.
                    if channel is not None:
                        await channel.close()
                    channel = grpc.aio.insecure_channel(target)
                    checked, missed = proc, 0
                if await _answers(channel, watch.timeout_s):
                    missed = 0
                    continue
                missed += 1
                if missed < watch.misses or self._stopping:
                    continue
                log.error(
                    "ext_proc worker %d (pid %d) did not answer %d health checks in a row; "
                    "killing it for a new one",
                    index,
                    proc.pid,
                    missed,
                )
                self.hung += 1
                self._serving[index] = False
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                missed = 0
        finally:
            if channel is not None:
                await channel.close()

    def signal_all(self, sig: signal.Signals) -> None:
        """Send ``sig`` to every running worker (SIGHUP: reload the config; a
        second SIGTERM cuts their drain short)."""
        for proc in self._procs:
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    async def stop(self, grace_s: float = 5.0, sig: signal.Signals = signal.SIGTERM) -> None:
        """Send ``sig`` (SIGTERM: drain first; SIGINT: at once) to every worker, and
        SIGKILL those still running after ``grace_s``."""
        self._stopping = True
        # Supervisors and watches first: one restarting a worker right now would
        # otherwise start it after the list below was taken, and leave it running.
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        live = [p for p in self._procs if p is not None and p.returncode is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
        if live:
            await asyncio.wait(
                [asyncio.create_task(p.wait()) for p in live], timeout=max(grace_s, 0.1)
            )
            for proc in live:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            for proc in live:
                await proc.wait()
        if self._reserved is not None:
            self._reserved.close()
        for sock in self._own:
            sock.close()
        if self._state_dir is not None:
            shutil.rmtree(self._state_dir, ignore_errors=True)


async def _answers(channel: grpc.aio.Channel, timeout_s: float) -> bool:
    """Whether the health service answers at all: NOT_SERVING (draining) is
    an answer too; only silence means the worker is stuck."""
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
    except grpc.aio.AioRpcError:
        return False
    return True


class _StderrPipe:
    """A worker's stderr: held while it starts, then copied to the parent's."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self._stream = stream
        self._held: collections.deque[bytes] = collections.deque(maxlen=_HELD_LINES)
        self._through = False
        self._done = asyncio.Event()

    async def run(self) -> None:
        try:
            while line := await self._stream.readline():
                if self._through:
                    _write_stderr(line)
                else:
                    self._held.append(line)
        except Exception:  # the worker is gone; nothing more will come
            pass
        finally:
            self._done.set()

    async def finished(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), 1.0)

    def last_line(self) -> str:
        for line in reversed(self._held):
            text = line.decode(errors="replace").strip()
            if text:
                return text
        return ""

    def pass_through(self) -> None:
        self._through = True
        while self._held:
            _write_stderr(self._held.popleft())


def _write_stderr(line: bytes) -> None:
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.buffer.write(line)
        sys.stderr.buffer.flush()


async def _drain(stream: asyncio.StreamReader) -> None:
    with contextlib.suppress(Exception):
        while await stream.readline():
            pass
