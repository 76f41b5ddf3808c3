"""What every command line shares: a user's mistake is one clear line on stderr and exit
status 2 (no traceback unless `--verbosity=1` or KOSMOS_JAX_TRACEBACK=1), and library INFO
chatter (Orbax, absl, TensorFlow) stays out of the console unless `--verbosity` asks for it."""
from __future__ import annotations

import logging
import os
import sys
from typing import Callable, Optional, Sequence

from absl import app
from absl import flags

from kosmos_jax import native_stderr

TRACEBACK_ENV = "KOSMOS_JAX_TRACEBACK"
USER_ERROR_EXIT = 2
# Exceptions a user's input causes (bad config, bad path, bad data); anything else is a bug and
# keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
               PermissionError, KeyError)


# The gin flags every gin-configured command takes (train, eval, plan, data.inspect, ...):
# defined once here, below both the entry points and the data tools that read them.
GIN_FILES = flags.DEFINE_multi_string("gin_file", [], "gin config file(s), applied in order")
GIN_BINDINGS = flags.DEFINE_multi_string("gin_bindings", [], "extra gin bindings")


class UserError(ValueError):
  """A mistake the user can fix; the message says what, where and how."""


def _verbose() -> bool:
  if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
    return True
  return flags.FLAGS.is_parsed() and flags.FLAGS["verbosity"].present and \
      flags.FLAGS.verbosity >= 1


class _DropAdvice(logging.Filter):
  """SeqIO's advice to cache in-memory (FunctionDataSource) tasks, logged once per task and
  source: the built-in shapes tasks are generated, not read, so it does not apply to them."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Using an uncached FunctionDataset")


def quiet_libraries() -> None:
  """Library loggers to WARNING (and SeqIO's caching advice off) unless --verbosity was given."""
  if flags.FLAGS.is_parsed() and flags.FLAGS["verbosity"].present:
    return
  for name in ("absl", "orbax", "tensorflow", "jax._src.xla_bridge"):
    logging.getLogger(name).setLevel(logging.WARNING)
  logging.getLogger().setLevel(logging.WARNING)
  for handler in logging.getLogger().handlers:
    handler.addFilter(_DropAdvice())


def message(error: BaseException) -> str:
  if isinstance(error, KeyError) and error.args:
    return str(error.args[0])
  return str(error).strip() or type(error).__name__


def run(main: Callable[[Sequence[str]], Optional[int]], argv: Optional[Sequence[str]] = None
        ) -> None:
  """`absl.app.run(main)` with user errors reported as one line."""
  startup = native_stderr.quiet_native_stderr()
  startup.__enter__()   # absl's start-up flushes buffered native log lines; main's output is not held

  def end_startup():
    nonlocal startup
    if startup is not None:
      startup.__exit__(None, None, None)
      startup = None

  def guarded(args):
    end_startup()
    quiet_libraries()
    try:
      return main(args)
    except USER_ERRORS as e:
      if _verbose():
        raise
      print(f"error: {message(e)}", file=sys.stderr)
      print(f"(set {TRACEBACK_ENV}=1 or pass --verbosity=1 for the traceback)", file=sys.stderr)
      sys.exit(USER_ERROR_EXIT)
  try:
    app.run(guarded, argv=argv)
  finally:
    end_startup()   # e.g. a flag parsing error: its message is passed on
