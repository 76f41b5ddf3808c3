"""The environment variable that makes the test suite's subprocesses compile fast, and the
environment for those that must compile as users' runs do (tests/conftest.py sets it)."""
import os

FAST_COMPILE_ENV = "JAX_DISABLE_MOST_OPTIMIZATIONS"


def optimised(environ=None) -> dict:
  """`environ` (default: this process's) without the fast-compile setting."""
  return {k: v for k, v in (os.environ if environ is None else environ).items()
          if k != FAST_COMPILE_ENV}
