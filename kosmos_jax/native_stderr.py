"""Native (C++) start-up chatter of TensorFlow / XLA kept out of the console: those lines bypass
Python's logging, so only the stderr file descriptor can catch them. Used while TensorFlow is
imported (package import) and while absl starts a command (`cli.run`)."""
import contextlib
import os
import sys
import tempfile


def is_startup_noise(line: str) -> bool:
  """C++ start-up lines of TensorFlow / XLA that say nothing to a user: INFO lines, the
  absl::InitializeLog notice, and the CUDA probe failing on a host without a GPU."""
  return (not line.strip() or line.startswith("I0000")
          or line.startswith("WARNING: All log messages before")
          or "failed call to cuInit" in line)


@contextlib.contextmanager
def quiet_native_stderr():
  """Holds what native code writes to fd 2 inside the block and passes on all but start-up
  noise when it ends. Those lines bypass Python's logging (TF 2.21 prints them before its
  logging is configured, and flushes buffered ones when absl initialises its log), so only the
  file descriptor can catch them. Set TF_CPP_MIN_LOG_LEVEL=0 to see everything."""
  if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
    yield
    return
  try:
    saved = os.dup(2)
  except OSError:      # no usable stderr (e.g. some notebook kernels)
    yield
    return
  with tempfile.TemporaryFile(mode="w+b") as captured:
    sys.stderr.flush()
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      for line in captured.read().decode("utf-8", "replace").splitlines():
        if not is_startup_noise(line):
          print(line, file=sys.stderr)
