"""Memory of one ``archway serve`` worker under many idle connections.

Starts ``archway serve`` (one worker, a minimal config), then for each round
opens N plain TCP connections that send nothing, closes them all, and reads the
worker's RSS (``VmRSS``) at each step; a last pass sends garbage on N more.

    python bench/idle_connections.py --connections 4000 --rounds 3

Figures are recorded in docs/transport.md.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway_bench import rss_mb  # noqa: E402

CONFIG = "llm_providers:\n  - model: openai/gpt-5\n    access_key: k\n    default: true\n"


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 20_000 if hard == resource.RLIM_INFINITY else min(20_000, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=2.5, help="seconds before each reading")
    args = parser.parse_args()
    _raise_fd_limit()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp, "archway.yaml")
        config.write_text(CONFIG)
        cmd = [sys.executable, "-m", "ext_proc.cli", "serve", str(config), "--port", "0"]
        cmd += ["--workers", "1", "--drain-seconds", "0"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            preexec_fn=_raise_fd_limit,
        )
        try:
            port = 0
            deadline = time.monotonic() + 60
            while not port and time.monotonic() < deadline:
                line = proc.stdout.readline() if proc.stdout else ""
                if "listening on" in line:
                    port = int(line.rsplit(":", 1)[1])
            if not port:
                raise SystemExit("archway serve did not start")
            time.sleep(args.settle)
            print(f"baseline: {rss_mb(proc.pid):.1f} MB")
            for round_ in range(1, args.rounds + 1):
                socks = [
                    socket.create_connection(("127.0.0.1", port)) for _ in range(args.connections)
                ]
                time.sleep(args.settle)
                opened = rss_mb(proc.pid)
                for s in socks:
                    s.close()
                time.sleep(args.settle)
                print(
                    f"round {round_}: {args.connections} idle {opened:.1f} MB,"
                    f" all closed {rss_mb(proc.pid):.1f} MB"
                )
            for _ in range(args.connections):
                with socket.create_connection(("127.0.0.1", port)) as s:
                    s.sendall(os.urandom(4096))
            time.sleep(args.settle)
            print(f"after {args.connections} garbage connections: {rss_mb(proc.pid):.1f} MB")
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
