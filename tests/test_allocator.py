"""The allocator tuning that keeps large request bodies in the heap."""

from __future__ import annotations

import subprocess
import sys

# Copies of a 1 MiB buffer, as a worker makes for a large body; counts the page
# faults they take. A child process keeps the tests' own allocator untouched.
_PROBE = """
import resource, sys
from ext_proc.server.allocator import keep_large_buffers
if sys.argv[1] == "tuned":
    assert keep_large_buffers(4 << 20)
frame = bytes(16384)
def one_request():
    received = bytearray()
    for _ in range(64):  # a 1 MiB message arriving in 16 KiB DATA frames
        received += frame
    body = bytes(received)
    del received
    answer = b"".join((body[:10], b"x", body[11:]))
    return b"".join(answer[i : i + 16384] for i in range(0, len(answer), 16384))
for _ in range(5):
    one_request()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    one_request()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, timeout=60, check=True
    )
    return int(out.stdout)


def test_large_copies_reuse_heap_pages_instead_of_faulting_new_ones() -> None:
    if not sys.platform.startswith("linux"):
        return
    default, tuned = _faults("default"), _faults("tuned")
    # Untuned, growing and copying a 1 MiB buffer maps fresh pages every time
    # (about 1,500 faults a request here); tuned, the heap's pages are reused.
    assert tuned < 500, (default, tuned)
    assert default > 10 * max(tuned, 1), (default, tuned)
