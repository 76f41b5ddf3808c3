"""kosmos-jax: train, evaluate and serve Kosmos-1-style multimodal LLMs in JAX."""
import contextlib as _contextlib
import os as _os
import sys as _sys
import tempfile as _tempfile


def _is_startup_noise(line: str) -> bool:
  """C++ start-up lines of TensorFlow / XLA that say nothing to a user: INFO lines, the
  absl::InitializeLog notice, and the CUDA probe failing on a host without a GPU."""
  return (not line.strip() or line.startswith("I0000")
          or line.startswith("WARNING: All log messages before")
          or "failed call to cuInit" in line)


@_contextlib.contextmanager
def quiet_native_stderr():
  """Holds what native code writes to fd 2 inside the block and passes on all but start-up
  noise when it ends. Those lines bypass Python's logging (TF 2.21 prints them before its
  logging is configured, and flushes buffered ones when absl initialises its log), so only the
  file descriptor can catch them. Set TF_CPP_MIN_LOG_LEVEL=0 to see everything."""
  if _os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
    yield
    return
  try:
    saved = _os.dup(2)
  except OSError:      # no usable stderr (e.g. some notebook kernels)
    yield
    return
  with _tempfile.TemporaryFile(mode="w+b") as captured:
    _sys.stderr.flush()
    _os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      _sys.stderr.flush()
      _os.dup2(saved, 2)
      _os.close(saved)
      captured.seek(0)
      for line in captured.read().decode("utf-8", "replace").splitlines():
        if not _is_startup_noise(line):
          print(line, file=_sys.stderr)


def _import_tensorflow_quietly() -> None:
  """Imports TensorFlow with its C++ start-up chatter (CUDA probing, oneDNN banner) kept out of
  the console; anything else it prints (warnings, errors) is passed on."""
  if "tensorflow" in _sys.modules:
    return
  _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  with quiet_native_stderr():
    import tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import


_import_tensorflow_quietly()
