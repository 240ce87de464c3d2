"""Child processes in tests: read their output with deadlines, find their children.

A blocking ``readline()`` on a child that hangs without closing its stdout
would stall the whole run; here a thread reads each child's lines into a queue
and every wait has a deadline.
"""

from __future__ import annotations

import queue
import subprocess
import threading
import time
import weakref
from pathlib import Path

__all__ = ["alive", "children", "is_zombie", "read_until"]

_EOF = None
_readers: weakref.WeakKeyDictionary[subprocess.Popen[str], _LineReader] = (
    weakref.WeakKeyDictionary()
)
_readers_lock = threading.Lock()


class _LineReader:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None, "start the process with stdout=subprocess.PIPE"
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.ended = False
        stream = proc.stdout
        thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        thread.start()

    def _read(self, stream: object) -> None:
        try:
            for line in stream:  # type: ignore[attr-defined]
                self.lines.put(line)
        except (OSError, ValueError):
            pass
        finally:
            self.lines.put(_EOF)


def _reader(proc: subprocess.Popen[str]) -> _LineReader:
    with _readers_lock:
        reader = _readers.get(proc)
        if reader is None:
            reader = _readers[proc] = _LineReader(proc)
        return reader


def read_until(proc: subprocess.Popen[str], marker: str, timeout_s: float) -> list[str]:
    """The lines ``proc`` prints up to and including the first containing
    ``marker``; ``AssertionError`` (with what it did print) when the process ends
    or ``timeout_s`` passes first."""
    reader = _reader(proc)
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while not reader.ended:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            line = reader.lines.get(timeout=remaining)
        except queue.Empty:
            break
        if line is _EOF:
            reader.ended = True
            break
        lines.append(line)
        if marker in line:
            return lines
    raise AssertionError(f"{marker!r} not printed within {timeout_s:g}s; got:\n{''.join(lines)}")


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "children").read_text().split()
        except FileNotFoundError:
            continue  # that thread ended between the listing and the read
        found.extend(int(c) for c in text)
    return found


def is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and not is_zombie(pid)
