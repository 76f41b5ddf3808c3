"""kosmos-jax: train, evaluate and serve Kosmos-1-style multimodal LLMs in JAX."""
import os as _os
import sys as _sys
import tempfile as _tempfile


def _import_tensorflow_quietly() -> None:
  """Imports TensorFlow with its C++ start-up INFO lines (CUDA probing, oneDNN banner) kept out
  of the console: TF 2.21 prints them before its logging is configured, ignoring
  TF_CPP_MIN_LOG_LEVEL. Anything else it prints (warnings, errors) is passed on. Set
  TF_CPP_MIN_LOG_LEVEL=0 to see everything."""
  if "tensorflow" in _sys.modules or _os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
    return
  _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  try:
    saved = _os.dup(2)
  except OSError:      # no usable stderr (e.g. some notebook kernels): import as is
    import tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    return
  with _tempfile.TemporaryFile(mode="w+b") as captured:
    _sys.stderr.flush()
    _os.dup2(captured.fileno(), 2)
    try:
      import tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    finally:
      _sys.stderr.flush()
      _os.dup2(saved, 2)
      _os.close(saved)
      captured.seek(0)
      for line in captured.read().decode("utf-8", "replace").splitlines():
        quiet = line.startswith("I0000") or line.startswith("WARNING: All log messages before")
        if line.strip() and not quiet:
          print(line, file=_sys.stderr)


_import_tensorflow_quietly()
