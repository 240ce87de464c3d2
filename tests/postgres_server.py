"""A throwaway PostgreSQL cluster for tests: initdb in a temporary directory,
started on a free loopback port, stopped and deleted afterwards.

PostgreSQL refuses to run as root, so under root the cluster belongs to the
``postgres`` user (Debian's package creates it) and its commands run through
``runuser``. A machine without PostgreSQL fails the tests that need it, loudly:
``apt-get install -y postgresql`` (``.ci/run`` does).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["postgres_bin_dir", "running_postgres"]

_TIMEOUT_S = 120


def postgres_bin_dir() -> Path:
    """Where ``initdb`` and ``pg_ctl`` are; raises when PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    # Debian keeps them off PATH, one directory per major version.
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if candidates:
        return Path(candidates[-1]).parent
    raise RuntimeError("PostgreSQL is not installed (no initdb): apt-get install -y postgresql")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_postgres(user: str = "archway") -> Iterator[str]:
    """Yields a connection string for a fresh cluster whose superuser is ``user``."""
    bin_dir = postgres_bin_dir()
    root = Path(tempfile.mkdtemp(prefix="archway-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, log = root / "data", root / "server.log"
    port = _free_port()

    def run(*args: str) -> None:
        subprocess.run(
            [*prefix, *args], check=True, capture_output=True, timeout=_TIMEOUT_S, cwd=root
        )

    started = False
    try:
        try:
            run(
                str(bin_dir / "initdb"),
                *("-D", str(data), "-U", user, "-A", "trust", "-E", "UTF8", "--no-sync"),
            )
            options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
            run(
                str(bin_dir / "pg_ctl"),
                *("-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"),
            )
        except subprocess.CalledProcessError as error:
            output = (error.stderr or b"").decode(errors="replace")
            server_log = log.read_text(errors="replace") if log.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {output}\n{server_log}") from None
        started = True
        yield f"postgresql://{user}@127.0.0.1:{port}/postgres"
    finally:
        if started:
            subprocess.run(
                [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                capture_output=True,
                timeout=_TIMEOUT_S,
                cwd=root,
                check=False,
            )
        shutil.rmtree(root, ignore_errors=True)
