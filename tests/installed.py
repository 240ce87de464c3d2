"""Archway as a user installs it: an sdist and a wheel built from a clean copy of
the repository, the wheel installed (not editable) into a fresh virtual
environment, and its ``archway`` run as a process.

Built once per test run (``installed_archway`` in conftest.py). The fresh venv
gets its dependencies from pip's usual sources (its configured indexes and
find-links, and its cache), as ``pip install .`` in the Dockerfile does: about
10 s on a warm machine, versus a venv on top of the test environment's
site-packages, which would also see the editable install under test and so
prove nothing.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[1]

BUILD_TIMEOUT_S = 120.0
INSTALL_TIMEOUT_S = 300.0
"""A cold machine downloads Envoy (about 50 MB) and grpcio."""
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Installation:
    venv: Path
    sdist: Path
    wheel: Path
    source: Path
    """The clean copy the sdist was built from."""

    @property
    def archway(self) -> Path:
        return self.venv / "bin" / "archway"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for the installed ``archway``: nothing that would put the
    source tree (or the test venv) on its path."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PROMETHEUS_MULTIPROC_DIR")
    }
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env | extra


def _run(argv: Sequence[str | Path], *, cwd: Path, timeout_s: float) -> None:
    result = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, argv))} failed ({result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )


def tracked_files(root: Path = ROOT) -> list[str]:
    """What a clone would hold: tracked files and new files not ignored."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    return sorted({name for name in out.decode().split("\0") if name and (root / name).is_file()})


def clean_copy(dest: Path, root: Path = ROOT) -> Path:
    for name in tracked_files(root):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)
    return dest


def build_and_install(base: Path) -> Installation:
    source = clean_copy(base / "src")
    dist = base / "dist"
    dist.mkdir()
    # The sdist first, and the wheel from the sdist: whatever the sdist forgets,
    # the wheel (and so the install) lacks too.
    _run(
        [
            sys.executable,
            "-c",
            "import sys; from setuptools import build_meta as b; b.build_sdist(sys.argv[1])",
            dist,
        ],
        cwd=source,
        timeout_s=BUILD_TIMEOUT_S,
    )
    (sdist,) = dist.glob("*.tar.gz")
    # No build isolation: setuptools is a test dependency, so no download.
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            dist,
            sdist,
        ],
        cwd=base,
        timeout_s=BUILD_TIMEOUT_S,
    )
    (wheel,) = dist.glob("*.whl")
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=base, timeout_s=BUILD_TIMEOUT_S)
    _run(
        [venv / "bin" / "python", "-m", "pip", "install", "-q", wheel],
        cwd=base,
        timeout_s=INSTALL_TIMEOUT_S,
    )
    return Installation(venv=venv, sdist=sdist, wheel=wheel, source=source)


def wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def sdist_names(sdist: Path) -> set[str]:
    with tarfile.open(sdist) as archive:
        # Every member sits under NAME-VERSION/.
        return {m.name.partition("/")[2] for m in archive.getmembers() if m.isfile()}


class Process:
    """A command whose stdout lines a test waits for, each wait bounded; stopped
    with SIGINT (``archway`` stops at once on it), killed if it lingers."""

    def __init__(
        self,
        argv: Sequence[str | Path],
        *,
        cwd: Path,
        env: dict[str, str],
        log: Path,
    ) -> None:
        self._log = log
        self._stderr: IO[bytes] = log.open("wb")
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        self._popen = subprocess.Popen(
            [str(a) for a in argv],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._popen.stdout is not None
        for line in self._popen.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def wait_for(self, predicate: Callable[[str], bool], timeout_s: float = START_TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                self._popen.wait(timeout=STOP_TIMEOUT_S)
                raise AssertionError(
                    f"exited ({self._popen.returncode}) before the line; "
                    f"stdout: {self.output[-20:]}\nstderr: {self.stderr()[-3000:]}"
                )
            self.output.append(line)
            if predicate(line):
                return line
        raise AssertionError(
            f"no such line in {timeout_s:g} s; stdout: {self.output[-20:]}\n"
            f"stderr: {self.stderr()[-3000:]}"
        )

    def stderr(self) -> str:
        if not self._stderr.closed:
            self._stderr.flush()
        return self._log.read_text(errors="replace")

    def wait(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        return self._popen.wait(timeout=timeout_s)

    def stop(self) -> int | None:
        if self._popen.poll() is None:
            self._popen.send_signal(signal.SIGINT)
            try:
                self._popen.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait(timeout=STOP_TIMEOUT_S)
        self._reader.join(timeout=STOP_TIMEOUT_S)
        self._stderr.close()
        return self._popen.returncode
