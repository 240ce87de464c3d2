"""ext_proc worker processes: start together, share a port, restart, stop together."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc
from envoy.service.ext_proc.v3.external_processor_pb2 import HttpHeaders, ProcessingRequest

from ext_proc.server.workers import HealthWatch, WorkerError, WorkerPool, default_workers
from tests.processes import alive, children, read_until

SERVE = [sys.executable, "-m", "ext_proc.cli", "serve"]
# No metrics endpoint: the default port (9003) would collide with another run's.
NO_METRICS = ("--metrics-port", "off")
CONFIG = "llm_providers:\n  - model: openai/gpt-5\n    access_key: k\n    default: true\n"


def _list_models(port: int) -> bytes:
    headers = HeaderMap(
        headers=[
            HeaderValue(key=":method", raw_value=b"GET"),
            HeaderValue(key=":path", raw_value=b"/v1/models"),
        ]
    )
    request = ProcessingRequest(request_headers=HttpHeaders(headers=headers, end_of_stream=True))
    # A new channel each time: a new connection, which SO_REUSEPORT may give to
    # any worker.
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = ext_proc_grpc.ExternalProcessorStub(channel)
        (response,) = list(stub.Process(iter([request]), timeout=10))
    return response.immediate_response.body


def _wait_for(check, timeout_s: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_default_is_one_worker_per_core() -> None:
    from ext_proc.server.workers import cgroup_cpu_limit

    cores = len(os.sched_getaffinity(0))
    if cgroup_cpu_limit() is None:
        assert default_workers() == cores
        # archway up leaves half the cores to the Envoy beside it.
        assert default_workers(beside_envoy=True) == max(1, cores // 2)
    else:
        assert 1 <= default_workers() <= cores
        assert 1 <= default_workers(beside_envoy=True) <= default_workers()


def test_serve_workers_share_a_port_restart_and_stop_together(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG)
    proc = subprocess.Popen(
        [*SERVE, str(path), "--port", "0", "--workers", "3", *NO_METRICS],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = read_until(proc, "listening on", 60)[-1]
        port = int(line.rsplit(":", 1)[1])
        workers = children(proc.pid)
        assert len(workers) == 3
        for _ in range(6):
            assert b"openai/gpt-5" in _list_models(port)

        # A crashed worker is replaced, and the port keeps answering meanwhile.
        # (Connections already queued on the dead worker's socket are reset: the
        # kernel does not move them to its siblings.)
        os.kill(workers[0], signal.SIGKILL)
        _wait_for(lambda: not alive(workers[0]), 10)
        # A connection the kernel had already queued for the dead worker is reset;
        # the next one lands on a live sibling.
        assert b"openai/gpt-5" in _list_models_retrying(port, attempts=3)
        _wait_for(lambda: len([p for p in children(proc.pid) if alive(p)]) == 3, 30)
        replaced = set(children(proc.pid)) - set(workers)
        assert len(replaced) == 1
        assert b"openai/gpt-5" in _list_models(port)

        now = [p for p in children(proc.pid) if alive(p)]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        for pid in now:
            assert not alive(pid), "worker left running"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_workers_die_with_their_parent(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG)
    proc = subprocess.Popen(
        [*SERVE, str(path), "--port", "0", "--workers", "2", *NO_METRICS],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        read_until(proc, "listening on", 60)
        workers = children(proc.pid)
        assert len(workers) == 2
        proc.kill()  # no chance to clean up: the kernel's parent-death signal must
        proc.wait(timeout=10)
        _wait_for(lambda: not any(alive(p) for p in workers), 15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_a_worker_that_cannot_start_is_an_error_in_its_own_words(tmp_path: Path) -> None:
    async def run() -> None:
        pool = WorkerPool(tmp_path / "missing.yaml", "127.0.0.1", 0, 2, ready_timeout_s=30)
        # The worker's last line on stderr, not "exited with status 1".
        with pytest.raises(WorkerError, match=r"missing\.yaml: cannot read the config file"):
            await pool.start()
        assert pool.pids == []

    asyncio.run(run())


def test_each_worker_also_answers_on_its_own_port(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG)

    async def run() -> None:
        pool = WorkerPool(path, "127.0.0.1", 0, 2)
        await pool.start()
        try:
            own = pool.worker_ports
            assert len(set(own)) == 2 and pool.port not in own
            for port in (pool.port, *own):
                assert b"openai/gpt-5" in await asyncio.to_thread(_list_models, port)
            # A restarted worker gets its own port back.
            first = pool.pids[0]
            os.kill(first, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while pool.restarts < 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert pool.restarts == 1  # counted once the new worker is ready
            assert first not in pool.pids and len(pool.pids) == 2
            assert pool.worker_ports == own
            assert b"openai/gpt-5" in await asyncio.to_thread(_list_models, own[0])
        finally:
            await pool.stop(2.0, signal.SIGINT)
        assert pool.pids == []

    asyncio.run(run())


def test_a_hung_worker_is_killed_and_replaced(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG)
    # Checked often, but each check as patient as the default: the healthy
    # sibling, starved of CPU on a loaded machine, must not be taken for hung.
    watch = HealthWatch(interval_s=0.2, timeout_s=2.0, misses=2)

    async def run() -> None:
        pool = WorkerPool(path, "127.0.0.1", 0, 2, health=watch)
        await pool.start()
        try:
            own = pool.worker_ports
            stopped = pool.pids[0]
            # Stopped, it never exits: only its silence on the health check tells.
            os.kill(stopped, signal.SIGSTOP)
            deadline = time.monotonic() + 60
            while pool.restarts < 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert pool.hung == 1 and pool.restarts == 1
            assert stopped not in pool.pids and len(pool.pids) == 2
            assert not alive(stopped)
            assert b"openai/gpt-5" in await asyncio.to_thread(_list_models, own[0])
            # The healthy sibling was left alone all along.
            assert pool.hung == 1
        finally:
            await pool.stop(2.0, signal.SIGINT)

    asyncio.run(run())


def test_a_busy_worker_is_not_mistaken_for_a_hung_one(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG)
    watch = HealthWatch(interval_s=0.1, timeout_s=2.0, misses=2)

    async def run() -> None:
        pool = WorkerPool(path, "127.0.0.1", 0, 1, health=watch)
        await pool.start()
        try:
            for _ in range(20):
                assert b"openai/gpt-5" in await asyncio.to_thread(_list_models, pool.port)
            assert pool.hung == 0 and pool.restarts == 0
        finally:
            await pool.stop(2.0, signal.SIGINT)

    asyncio.run(run())


def test_a_cgroup_cpu_quota_caps_the_default(tmp_path: Path) -> None:
    from ext_proc.server.workers import cgroup_cpu_limit

    v2, quota, period = tmp_path / "cpu.max", tmp_path / "quota", tmp_path / "period"
    missing = tmp_path / "missing"
    v2.write_text("150000 100000\n")
    assert cgroup_cpu_limit(v2, missing, missing) == 1.5
    v2.write_text("max 100000\n")
    assert cgroup_cpu_limit(v2, missing, missing) is None
    quota.write_text("200000\n")
    period.write_text("100000\n")
    assert cgroup_cpu_limit(missing, quota, period) == 2.0
    quota.write_text("-1\n")
    assert cgroup_cpu_limit(missing, quota, period) is None
    assert cgroup_cpu_limit(missing, missing, missing) is None


def _list_models_retrying(port: int, *, attempts: int) -> bytes:
    for attempt in range(attempts):
        try:
            return _list_models(port)
        except grpc.RpcError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.1)
    raise AssertionError("unreachable")
