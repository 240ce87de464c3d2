"""Several ext_proc worker processes on one port, supervised by their parent.

One Python process runs on one core at a time, so the ext_proc server scales
with cores by running N copies. Each worker is ``archway serve CONFIG
--workers 1 --reuse-port``: an ordinary single-process server whose socket has
``SO_REUSEPORT``, so the kernel spreads Envoy's HTTP/2 connections over the
workers. The parent holds the port for the pool's whole life (a bound socket
that never listens, so it takes no connections), which keeps a restarted
worker's port from being taken by anyone else.

With ``own_ports`` each worker also listens on a port of its own, held the
same way. ``archway up`` gives Envoy those ports as separate endpoints: Envoy
then round-robins streams over the workers from each of its threads. With only
the shared port, the kernel hashes Envoy's few long-lived connections (one per
Envoy thread) onto the workers, and two connections land on the same worker
half the time, leaving the other idle.

Session pins and token counters must be one across the workers: with more
than one, the parent creates a SQLite file that every worker shares
(``ext_proc.state.shared.FileState``, path in ``ARCHWAY_SHARED_STATE_FILE``)
and removes it when the pool stops.

The parent restarts a worker that dies, after a delay that doubles with each
quick failure. Workers run in their own session (a terminal's Ctrl-C reaches
only the parent, which then stops them in order) and get SIGTERM from the
kernel if the parent dies, so none is ever orphaned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

from ext_proc.deploy.envoy_process import parent_death_prefix
from ext_proc.state.shared import SHARED_STATE_FILE_ENV

__all__ = ["READY_LINE", "WorkerError", "WorkerPool", "default_workers"]

log = logging.getLogger("archway.workers")

READY_LINE = "archway ext_proc server listening on"
"""What a worker prints on stdout once it accepts streams."""

_MIN_BACKOFF_S = 0.5
_MAX_BACKOFF_S = 30.0
_STABLE_AFTER_S = 30.0
"""A worker that lived this long counts as healthy: the next crash restarts fast."""


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


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, never-listening ``SO_REUSEPORT`` socket that holds ``host:port``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


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
        ready_timeout_s: float = 30.0,
        own_ports: bool = False,
        drain_s: float | None = None,
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
        self._own_ports = own_ports
        self._drain_s = drain_s
        self._own: list[socket.socket] = []
        self._procs: list[asyncio.subprocess.Process | None] = [None] * count
        self._supervisors: list[asyncio.Task[None]] = []
        self._drains: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._state_dir: Path | None = None
        self.restarts = 0

    @property
    def port(self) -> int:
        if self._reserved is None:
            raise WorkerError("the pool has not started")
        return int(self._reserved.getsockname()[1])

    @property
    def worker_ports(self) -> list[int]:
        """Each worker's own port (empty without ``own_ports``)."""
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
        ]
        if self._drain_s is not None:
            command += ["--drain-seconds", str(self._drain_s)]
        if self._own:
            command += ["--own-port", str(self.worker_ports[index])]
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
        if self._own_ports:
            self._own = [reserve_port(self.host, 0) for _ in range(self.count)]
        try:
            await asyncio.gather(*(self._spawn(i) for i in range(self.count)))
        except BaseException:
            await self.stop(0)
            raise
        self._supervisors = [
            asyncio.create_task(self._supervise(i), name=f"archway-worker-{i}")
            for i in range(self.count)
        ]
        return self.port

    async def _spawn(self, index: int) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self._state_dir is not None:
            env[SHARED_STATE_FILE_ENV] = str(self._state_dir / "shared.sqlite")
        proc = await asyncio.create_subprocess_exec(
            *parent_death_prefix(),
            *self._command(index),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        self._procs[index] = proc
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(self._ready_timeout_s):
                while True:
                    line = await proc.stdout.readline()
                    if not line:
                        code = await proc.wait()
                        raise WorkerError(
                            f"ext_proc worker {index} exited with status {code} while starting"
                        )
                    if line.decode(errors="replace").startswith(READY_LINE):
                        break
        except TimeoutError:
            raise WorkerError(
                f"ext_proc worker {index} was not ready after {self._ready_timeout_s:g}s"
            ) from None
        # Nothing else is expected on stdout; reading on keeps a chatty worker
        # from ever blocking on a full pipe.
        drain = asyncio.create_task(_drain(proc.stdout))
        self._drains.add(drain)
        drain.add_done_callback(self._drains.discard)
        log.debug("worker %d ready (pid %d)", index, proc.pid)

    async def _supervise(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        started = loop.time()
        while True:
            proc = self._procs[index]
            assert proc is not None
            code = await proc.wait()
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

    def signal_all(self, sig: signal.Signals) -> None:
        """Send ``sig`` to every running worker (a second SIGTERM cuts their drain short)."""
        for proc in self._procs:
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    async def stop(self, grace_s: float = 5.0, sig: signal.Signals = signal.SIGTERM) -> None:
        """Send ``sig`` (SIGTERM: drain first; SIGINT: at once) to every worker, and
        SIGKILL those still running after ``grace_s``."""
        self._stopping = True
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
        for task in self._supervisors:
            task.cancel()
        for task in self._supervisors:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._reserved is not None:
            self._reserved.close()
        for sock in self._own:
            sock.close()
        if self._state_dir is not None:
            shutil.rmtree(self._state_dir, ignore_errors=True)


async def _drain(stream: asyncio.StreamReader) -> None:
    with contextlib.suppress(Exception):
        while await stream.readline():
            pass
