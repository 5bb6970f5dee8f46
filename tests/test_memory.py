"""glibc malloc and GC tuning (photofield_ai.memory), checked in fresh interpreters: where a
request-sized array comes from is read from glibc's own accounting (mallinfo2's bytes in
mmapped blocks)."""

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux", reason="glibc is Linux-only")

# In a fresh interpreter: optionally tune, then allocate a 200 kB block (a resized thumbnail)
# and a 600 kB one (a float32 model input), and report whether each came from mmap (a fresh heap
# has little room at hand, so the threshold decides).
_PROBE = """
import ctypes, gc, json, sys
from photofield_ai.memory import tune_process
FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in FIELDS.split()]
libc = ctypes.CDLL("libc.so.6")
if not hasattr(libc, "mallinfo2"):
    print(json.dumps(None)); sys.exit()
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
applied = tune_process() if sys.argv[1] == "tune" else None
def mmapped(size):
    before = libc.mallinfo2().hblkhd
    libc.malloc(size)
    return libc.mallinfo2().hblkhd > before
large = mmapped(600 * 1024)  # first: the next allocation grows the heap's room at hand
print(json.dumps({"applied": applied, "large": large, "request": mmapped(200 * 1024),
                  "gc": gc.get_threshold()}))
"""


def _probe(mode: str, **env: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, mode],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=True,
    )
    found = json.loads(result.stdout)
    if found is None:
        pytest.skip("glibc without mallinfo2 (older than 2.33)")
    assert isinstance(found, dict)
    return found


def test_untuned_glibc_maps_a_request_sized_array() -> None:
    # The baseline the tuning changes: glibc's 128 kB threshold sends it to mmap.
    assert _probe("plain")["request"] is True


def test_tuned_process_keeps_request_arrays_on_the_heap_and_batches_off_it() -> None:
    found = _probe("tune")
    assert found["applied"] is True
    assert found["request"] is False
    assert found["large"] is True
    assert found["gc"] == [10_000, 20, 20]


def test_explicit_malloc_variables_win() -> None:
    env = {"MALLOC_ARENA_MAX": "4", "MALLOC_MMAP_THRESHOLD_": "65536"}
    found = _probe("tune", **env)
    assert found["request"] is True  # the variable's 64 kB threshold, not ours
    # Only the settings without a variable were applied.
    env.update(MALLOC_TRIM_THRESHOLD_="1", MALLOC_TOP_PAD_="0")
    assert _probe("tune", **env)["applied"] is False
