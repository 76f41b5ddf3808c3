"""host_malloc.tune: on glibc it stops XLA:CPU's per-step temporaries from being mapped and
page-faulted in afresh (checked by counting a fresh process's page faults per large
allocation), and KOSMOS_JAX_SYSTEM_MALLOC=1 leaves the defaults."""
import os
import subprocess
import sys

import pytest

CHILD = r"""
import ctypes, resource, sys
from kosmos_jax import host_malloc
applied = host_malloc.tune()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
size = 64 << 20

def touch_once():
  block = libc.malloc(size)
  ctypes.memset(block, 1, size)
  libc.free(block)

touch_once()                      # the first use faults its pages in either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
  touch_once()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(applied, faults)
"""


def run_child(**env):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-c", CHILD], cwd=root, capture_output=True, text=True,
                       check=True, env={**os.environ, **env}, timeout=120).stdout.split()
  return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_tuned_allocator_reuses_freed_memory_and_opt_out_keeps_defaults():
  applied, faults = run_child()
  assert applied
  pages = (64 << 20) // 4096
  assert faults < pages // 10, faults          # reused: almost no new faults
  applied, faults = run_child(KOSMOS_JAX_SYSTEM_MALLOC="1")
  assert not applied
  assert faults > 2 * pages, faults            # glibc default: mmap + munmap every time
