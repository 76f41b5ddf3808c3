"""Host allocator settings for XLA:CPU: keep freed memory instead of mapping it afresh each step.

XLA:CPU allocates each executable's temporaries (about 1 GB for the benchmark's train step) with
malloc at every call and frees them after it. glibc serves requests that large, or any request
from a worker thread's arena, with a fresh `mmap` and returns it with `munmap`, so every step
page-faults its whole working set in again: ~250,000 faults and 0.3 s of kernel time per step
of the benchmark config on two cores (docs/performance.md). With one arena, no mmap for large
requests and no trimming, freed memory stays in the process and the next step reuses it; peak
memory is unchanged, but it is not handed back to the OS until the process ends.

`tune()` must run before TensorFlow and JAX start their threads (each thread picks its arena on
first use), so importing `kosmos_jax` does it, before it imports TensorFlow.
KOSMOS_JAX_SYSTEM_MALLOC=1 leaves glibc's defaults.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

OPT_OUT_ENV = "KOSMOS_JAX_SYSTEM_MALLOC"
# glibc's mallopt parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_TOP_PAD_BYTES = 1 << 30        # grow the heap in 1 GiB steps (address space; pages on touch)
_NEVER_TRIM = (1 << 31) - 1     # mallopt takes an int

_applied = False


def tune() -> bool:
  """Applies the settings above on glibc (Linux); returns whether they are in effect."""
  global _applied
  if _applied:
    return True
  if os.environ.get(OPT_OUT_ENV, "") not in ("", "0") or not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):      # not glibc (e.g. musl): nothing to tune
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TOP_PAD, _TOP_PAD_BYTES),
              (_M_TRIM_THRESHOLD, _NEVER_TRIM))
  _applied = all(mallopt(param, value) == 1 for param, value in settings)
  return _applied
