"""kosmos-jax: train, evaluate and serve Kosmos-1-style multimodal LLMs in JAX."""
import os as _os
import sys as _sys

from kosmos_jax import host_malloc as _host_malloc
from kosmos_jax import native_stderr as _native_stderr
from kosmos_jax.training import xla_cpu as _xla_cpu


def _import_tensorflow_quietly() -> None:
  """Imports TensorFlow with its C++ start-up chatter (CUDA probing, oneDNN banner) kept out of
  the console; anything else it prints (warnings, errors) is passed on."""
  if "tensorflow" in _sys.modules:
    return
  _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  with _native_stderr.quiet_native_stderr():
    import tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import


# Before TensorFlow and JAX start their threads (each picks its malloc arena on first use).
_host_malloc.tune()
# Before JAX creates its CPU backend, which reads XLA_FLAGS once.
_xla_cpu.configure_process()
_import_tensorflow_quietly()
