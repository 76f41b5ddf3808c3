"""Gin plumbing shared by the train / eval / infer entry points, T5X-style:

  python -m kosmos_jax.train --gin_file=experiments/shapes_tiny.gin --gin.TRAIN_STEPS=100

`--gin.NAME=VALUE` becomes the binding `NAME=VALUE`; gin files are looked up in the current
directory, then in `--gin_search_paths`, then in the project's `gin/` folder.
"""
from __future__ import annotations

import difflib
import glob
import importlib
import logging
import os
import re
import sys
from typing import Any, Optional, Sequence

from absl import flags
import gin

from kosmos_jax import cli
from kosmos_jax import paths


class _QuietGinResourceMisses(logging.Filter):
  """gin's package-resource reader logs an ERROR for every include it does not own, even when
  the plain file reader then finds the file; those lines are noise."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Path not found:")


logging.getLogger().addFilter(_QuietGinResourceMisses())

PACKAGE_GIN_DIR = paths.GIN_DIR

GIN_FILES, GIN_BINDINGS = cli.GIN_FILES, cli.GIN_BINDINGS   # --gin_file, --gin_bindings
GIN_SEARCH_PATHS = flags.DEFINE_list("gin_search_paths", [], "folders searched for gin files")
# Flags live here, not in the entry modules: `python -m kosmos_jax.train` runs train.py as
# __main__ and the gin files import it again as kosmos_jax.train.
MULTIPROCESS = flags.DEFINE_bool(
    "multiprocess", False,
    "call jax.distributed.initialize() first; alone it auto-detects the cluster (Cloud TPU, "
    "SLURM), or give --coordinator_address, --num_processes and --process_id")
COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address", None, "--multiprocess: HOST:PORT of process 0 (e.g. 10.0.0.2:1234)")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "--multiprocess: processes in all")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "--multiprocess: this process, 0..N-1")
CPU_COLLECTIVES = flags.DEFINE_enum(
    "cpu_collectives", "auto", ["auto", "gloo", "mpi", "none"],
    "cross-process collectives on CPU; auto: gloo when the platform is CPU and "
    "--num_processes > 1 (several CPU processes on one machine or a CPU cluster)")


def distributed_args(multiprocess: bool, coordinator_address: Optional[str] = None,
                     num_processes: Optional[int] = None, process_id: Optional[int] = None
                     ) -> Optional[dict[str, Any]]:
  """kwargs for jax.distributed.initialize(), or None for a single-process run.

  Raises ValueError (one line) when the flags do not make one consistent cluster."""
  explicit = {"coordinator_address": coordinator_address, "num_processes": num_processes,
              "process_id": process_id}
  given = {k: v for k, v in explicit.items() if v is not None}
  if not multiprocess:
    if given:
      raise ValueError(f"--{' --'.join(given)} need --multiprocess")
    return None
  if not given:
    return {}                       # auto-detection: Cloud TPU, SLURM, ...
  if coordinator_address is None or num_processes is None:
    raise ValueError("--multiprocess with explicit settings needs both --coordinator_address="
                     f"HOST:PORT and --num_processes=N (got {given})")
  host, sep, port = coordinator_address.rpartition(":")
  if not sep or not host or not port.isdigit():
    raise ValueError(f"--coordinator_address={coordinator_address!r}: write HOST:PORT, e.g. "
                     "127.0.0.1:12355")
  if num_processes < 1:
    raise ValueError(f"--num_processes={num_processes} must be at least 1")
  if process_id is None and num_processes > 1:
    raise ValueError(f"--num_processes={num_processes} needs --process_id=0..{num_processes - 1}"
                     " on each process")
  process_id = 0 if process_id is None else process_id
  if not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id={process_id} must be in 0..{num_processes - 1} "
                     f"(--num_processes={num_processes})")
  return {"coordinator_address": coordinator_address, "num_processes": num_processes,
          "process_id": process_id}


def _platform_is_cpu() -> bool:
  """Whether JAX will run on CPU, decided without starting a backend (initialize() must come
  first): JAX_PLATFORMS / jax_platforms if set, else no accelerator plugin installed."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  platforms = jax.config.jax_platforms or os.environ.get("JAX_PLATFORMS", "")
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  plugins = ("libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
             "jax_rocm7_plugin")
  return not any(importlib.util.find_spec(name) for name in plugins)


def cpu_collectives(choice: str, num_processes: Optional[int], platform_is_cpu: bool
                    ) -> Optional[str]:
  """The jax_cpu_collectives_implementation to set, or None to leave JAX's default."""
  if choice == "none":
    return None
  if choice != "auto":
    return choice
  return "gloo" if platform_is_cpu and (num_processes or 1) > 1 else None


def maybe_initialize_distributed() -> None:
  """jax.distributed.initialize() as the --multiprocess flags say (call before any jax use)."""
  kwargs = distributed_args(MULTIPROCESS.value, COORDINATOR_ADDRESS.value, NUM_PROCESSES.value,
                            PROCESS_ID.value)
  if kwargs is None:
    return
  import jax  # pylint: disable=g-import-not-at-top
  implementation = cpu_collectives(CPU_COLLECTIVES.value, kwargs.get("num_processes"),
                                   _platform_is_cpu())
  if implementation:
    jax.config.update("jax_cpu_collectives_implementation", implementation)
  jax.distributed.initialize(**kwargs)


def split_gin_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Separates `--gin.NAME=VALUE` arguments (returned as bindings) from the other flags."""
  rest, bindings = [], []
  for arg in argv:
    if arg.startswith("--gin."):
      name, sep, value = arg[len("--gin."):].partition("=")
      if not sep:
        raise ValueError(f"{arg!r}: write gin overrides as --gin.NAME=VALUE")
      bindings.append(f"{name}={value}")
    else:
      rest.append(arg)
  return rest, bindings


def _one_line(error: Exception) -> str:
  return " ".join(str(error).split())


_REQUIRED = re.compile(r"(\w+)/macro\.value set to `%gin\.REQUIRED`")


def _finalize() -> None:
  try:
    gin.finalize()
  except ValueError as e:
    missing = _REQUIRED.search(str(e))
    if not missing:
      raise
    name = missing.group(1)
    raise ValueError(f"gin macro {name} is required (%gin.REQUIRED) but not set: pass "
                     f"--gin.{name}=VALUE "
                     f"(strings in inner quotes, e.g. --gin.{name}=\"'runs/my_run'\")") from e


def parse(files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str] = (),
          finalize: bool = True) -> None:
  """Parses gin files and bindings; errors are one line naming the file, binding or macro."""
  for path in list(search_paths) + [PACKAGE_GIN_DIR]:
    gin.add_config_file_search_path(path)
  resolved = [_resolve(f, list(search_paths) + [PACKAGE_GIN_DIR]) for f in files]
  for path in resolved:
    try:
      gin.parse_config_file(path, skip_unknown=False)
    except Exception as e:  # gin raises several types; re-raise with the file named
      raise ValueError(f"gin file {path}: {type(e).__name__}: {_one_line(e)}") from e
  for binding in bindings:
    try:
      gin.parse_config(binding)
    except Exception as e:
      hint = ""
      if isinstance(e, SyntaxError) or "Failed to parse" in str(e):
        name, _, value = binding.partition("=")
        hint = (f" (a string value needs inner quotes: --gin.{name.strip()}=\"'{value.strip()}'\")")
      raise ValueError(f"gin binding {binding!r}: {_one_line(e)}{hint}") from e
  if finalize:
    _finalize()


def _resolve(path: str, search_paths: Sequence[str]) -> str:
  if os.path.exists(paths.resolve(path)):
    return paths.resolve(path)
  for folder in search_paths:
    candidate = os.path.join(folder, path)
    if os.path.exists(candidate):
      return candidate
  known = [os.path.relpath(f, PACKAGE_GIN_DIR)
           for f in glob.glob(os.path.join(PACKAGE_GIN_DIR, "**", "*.gin"), recursive=True)]
  close = difflib.get_close_matches(path, known, n=3, cutoff=0.5)
  hint = f"; did you mean {', '.join(close)}?" if close else f"; shipped files: {sorted(known)}"
  raise FileNotFoundError(f"gin file {path!r} not found here or in {list(search_paths)}{hint}")


def parse_from_flags(extra_bindings: Sequence[str] = ()) -> None:
  parse(GIN_FILES.value, list(GIN_BINDINGS.value) + list(extra_bindings), GIN_SEARCH_PATHS.value)


def operative_config() -> str:
  return gin.operative_config_str()


def run_entry_point(module: str, function: str) -> None:
  """`python -m <module>` for a gin-configured `function`: splits `--gin.NAME=VALUE` overrides
  from the absl flags, parses gin, and calls `module.function` as gin configured it.

  The function is looked up in the imported `module` (the gin files bind that module; when the
  entry point runs as __main__ it is a different module object)."""
  def main(unused_argv):
    maybe_initialize_distributed()
    parse_from_flags(bindings)
    gin.get_configurable(getattr(importlib.import_module(module), function))()
  try:
    argv, bindings = split_gin_overrides(sys.argv)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(cli.USER_ERROR_EXIT)
  cli.run(main, argv=argv)
