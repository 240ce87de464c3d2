#!/usr/bin/env python3
"""What one shared-state operation costs, per store: a session pin claimed and
read, and a token counter admitted and settled (ext_proc/state/shared.py).

    python bench/shared_state_cost.py [--ops 5000] [--redis]

``memory`` is one process's dictionaries; ``file`` is the SQLite file the
workers of one machine share (on /dev/shm, as ``--workers`` puts it); ``redis``
(with ``--redis``) a ``redis-server`` started on loopback for the run. Figures
are microseconds of wall time per operation, medians of five batches, on one
client (a request's own cost, not the store's throughput).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ext_proc.state.shared import FileState, LocalState, SharedState  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _per_op_us(op: Callable[[int], Awaitable[object]], ops: int) -> float:
    batches = []
    for _ in range(5):
        start = time.perf_counter()
        for i in range(ops):
            await op(i)
        batches.append((time.perf_counter() - start) / ops * 1e6)
    return statistics.median(batches)


async def measure(store: SharedState, ops: int) -> dict[str, float]:
    return {
        "claim_pin (new)": await _per_op_us(
            lambda i: store.claim_pin(f"s{i}-{time.monotonic_ns()}", "openai/gpt-5", 600), ops
        ),
        "get_pin": await _per_op_us(lambda i: store.get_pin("s1"), ops),
        "admit": await _per_op_us(lambda i: store.admit("client:bench", 1, 10**12, 3600), ops),
        "add (settle)": await _per_op_us(lambda i: store.add("client:bench", 1, 3600), ops),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=5000)
    parser.add_argument("--redis", action="store_true", help="also a local redis-server")
    args = parser.parse_args()
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(dir=shm) as tmp:
        stores: dict[str, Callable[[], SharedState]] = {
            "memory": LocalState,
            "file": lambda: FileState(Path(tmp) / "state.sqlite"),
        }
        proc = None
        if args.redis:
            if shutil.which("redis-server") is None:
                parser.error("--redis needs redis-server (apt-get install -y redis-server)")
            port = _free_port()
            proc = subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
                stdout=subprocess.DEVNULL,
            )
            time.sleep(0.5)
            from ext_proc.state.redis_state import RedisState

            stores["redis"] = lambda: RedisState(f"redis://127.0.0.1:{port}/0", timeout_s=5)
        try:
            for name, make in stores.items():

                async def run(make: Callable[[], SharedState] = make) -> dict[str, float]:
                    store = make()
                    try:
                        return await measure(store, args.ops)
                    finally:
                        await store.close()

                figures = asyncio.run(run())
                print(f"{name:7s} " + "  ".join(f"{k} {v:7.1f} us" for k, v in figures.items()))
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
