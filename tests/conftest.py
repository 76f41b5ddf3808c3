"""Test-wide settings: 8 virtual CPU devices, fast compiles, a `slow` marker (run with --runslow)."""
import os

from tests.helpers import compile_env

# Must happen before jax is imported anywhere: multi-device tests need 8 host devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# Compile time dominates tiny-model tests on 2 cores: entry points run as subprocesses (train,
# eval, infer, multi-process) compile without XLA's heavy passes too (same numerics; about a
# third off the multi-process test). Tests of what the optimising compiler makes (benchmarks,
# oneDNN compiles, the TPU memory planner) drop it: `compile_env.optimised`.
os.environ.setdefault(compile_env.FAST_COMPILE_ENV, "true")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)   # this process too (see above)
# No persistent compilation cache: on XLA:CPU, loading the cached microbatch train step aborts
# the process at random (seen with jax 0.10.2 on this code before and after the package move),
# and CI starts from a fresh clone, where the cache saves nothing.


def pytest_addoption(parser):
  parser.addoption("--runslow", action="store_true", default=False, help="also run @slow tests")


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: long-running test, skipped unless --runslow")


# The longest modules run first: `make test` hands whole files to whichever xdist worker is
# free, in this order (Makefile, PYTEST_DIST). With them at the end of the collection
# (alphabetical), one worker ran a 3-5 minute test alone while the other sat idle.
LONG_MODULES = ("tests/training/test_multiprocess.py", "tests/test_benchmarks.py",
                "tests/data/test_data_sharded_iterator.py", "tests/training/test_resume.py",
                "tests/test_plan.py")


def _long_modules_first(items):
  rank = {module: i for i, module in enumerate(LONG_MODULES)}
  items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(LONG_MODULES)))


def pytest_collection_modifyitems(config, items):
  _long_modules_first(items)                      # stable: order within a module is kept
  if config.getoption("--runslow"):
    return
  skip = pytest.mark.skip(reason="slow: run with --runslow (make test-all)")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)
