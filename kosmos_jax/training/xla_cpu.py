"""XLA:CPU settings for training and decoding on CPU: matrix products through oneDNN where it is
exact on the CPU at hand, a memory-lean schedule.

On CPU, XLA's default GEMM paths (YNNPACK for plain layouts, Eigen otherwise) run the batched
attention products [batch, heads, q, k] at about half of oneDNN's speed and the transposed-
operand weight-gradient GEMMs ~15% slower; with XLA's oneDNN dot fusion the benchmark's train
step is ~10% faster on two cores (docs/performance.md). These options are passed per program
(`jax.jit(compiler_options=...)`) to the train and eval steps of CPU meshes and to decoding's
programs on CPU (`compiler_options(..., program=...)`) only, so other JAX code in the process
and TPU/GPU compiles are untouched.

The fusion is experimental in XLA and aborts the process at compile time ("partition compile
failed") on two patterns: a sum of two GEMM outputs, and an elementwise op fused *before* a GEMM.
The model avoids both (`layers.project_fanout`, softmax normalised after the PV product), and
the test suite compiles every model variant with these options (on CPUs where
the probe below keeps them on). oneDNN's kernels are
deterministic for a given process layout, but not bit-identical across layouts (a run resumed
on 1 x 8 devices from a 2 x 4 checkpoint matches to float rounding, ~1e-7 relative).
KOSMOS_JAX_CPU_ONEDNN=0 turns the options off (XLA's default CPU GEMMs: bit-identical across
layouts).

On some CPUs the fusion computes wrong numbers: on an AMD EPYC (Zen 3, AVX2, no AVX-512) a
product followed by a multiply or divide by a scalar or a broadcast vector (the attention's
softmax normaliser, a loss cotangent) came out tens of times too large, which made the
benchmark step's gradient norm 2% off and batch-8 greedy decoding emit other tokens. Before
the first program of a process uses oneDNN, `onednn_is_exact` compiles a few such products
both ways and compares; where they differ, oneDNN is left off for the process (one warning).
KOSMOS_JAX_CPU_ONEDNN=1 skips that check and forces it on.

XLA:CPU's default instruction scheduler orders a program for concurrency and keeps more
activations live at once; the benchmark step needs 785 instead of 875 MiB without it, at the
same speed. XLA reads that setting only from the process's XLA_FLAGS, so `configure_process`
(run when `kosmos_jax` is imported, before JAX starts its CPU backend) appends it there unless
the user's XLA_FLAGS already choose.
"""
from __future__ import annotations

import functools
import logging
import os
from typing import Any, Callable, Iterable, Optional

import numpy as np

OPT_OUT_ENV = "KOSMOS_JAX_CPU_ONEDNN"
ONEDNN_OPTIONS = {"xla_cpu_use_onednn": True,
                  "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}
SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"
OFF_VALUES = ("0", "false", "no", "off")
FORCE_VALUES = ("1", "true", "yes", "on")


def enabled() -> bool:
  """Whether CPU programs use oneDNN: KOSMOS_JAX_CPU_ONEDNN=0/false/no/off: no; 1/true/yes/on:
  yes, unchecked; unset (or anything else): where `onednn_is_exact` holds on this CPU."""
  setting = os.environ.get(OPT_OUT_ENV, "").strip().lower()
  if setting in OFF_VALUES:
    return False
  return setting in FORCE_VALUES or onednn_is_exact()


def _epilogue_probes() -> list[tuple[str, Callable, list[np.ndarray]]]:
  """(name, function, inputs): products whose scaling XLA folds into the oneDNN GEMM as an
  epilogue, the patterns seen to go wrong (module docstring), plus a bias add."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(0)
  uniform = lambda *shape: (rng.rand(*shape) + 0.5).astype(np.float32)
  return [
      ("x @ w * scalar", lambda x, w: (x @ w) * 3.0, [uniform(16, 32), uniform(32, 24)]),
      ("x @ w / per-row", lambda x, w, n: (x @ w) / n[:, None],
       [uniform(16, 32), uniform(32, 24), uniform(16)]),
      ("batched p @ v / per-row", lambda p, v, n: jnp.einsum("bqk,bkd->bqd", p, v) / n[..., None],
       [uniform(2, 16, 32), uniform(2, 32, 24), uniform(2, 16)]),
      ("x @ w + bias", lambda x, w, b: x @ w + b, [uniform(16, 32), uniform(32, 24), uniform(24)]),
  ]


@functools.lru_cache(maxsize=None)
def onednn_is_exact() -> bool:
  """True when XLA's oneDNN dot fusion gives the default kernels' numbers (to float rounding)
  on the probes of `_epilogue_probes`, on this process's CPU. Compiled once per process."""
  import jax  # pylint: disable=g-import-not-at-top  (this module is imported before JAX starts)
  device = jax.local_devices(backend="cpu")[0]   # this process's own (multi-process runs)
  wrong = []
  for name, function, inputs in _epilogue_probes():
    args = [jax.device_put(x, device) for x in inputs]
    expected = np.asarray(jax.jit(function)(*args))
    actual = np.asarray(jax.jit(function, compiler_options=ONEDNN_OPTIONS)(*args))
    if not np.allclose(actual, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max()):
      wrong.append(name)
  if wrong:
    logging.warning("XLA's oneDNN fusion gives wrong results on this CPU (%s); CPU programs use "
                    "XLA's default kernels instead (%s=1 forces oneDNN).", ", ".join(wrong),
                    OPT_OUT_ENV)
  return not wrong


PROGRAMS = ("step", "prefill", "decode")
# Token rows (batch x prompt length) from which a decoding prompt runs faster through oneDNN:
# 600 rows (batch 8 x 75) 89 -> 86 ms, while 75 rows (batch 1) are ~1 ms slower with it.
PREFILL_MIN_ROWS = 512
# max/min reductions without NaN propagation checks: the softmax and greedy-argmax maxima of
# decoding run vectorised (batch-8 vision tower -2.5 ms, decoding step 1.78 -> 1.61 ms). A NaN
# still reaches the output through exp/compare, so this changes no finite result.
FAST_MAX = {"xla_cpu_enable_fast_min_max": True}
# Copy insertion that analyses a while loop's body region by region: with it, the decoding
# loop's KV-cache writes (attention reads the cache as it was, `layers.Attention`) are done in
# place instead of copying every cache buffer each step (batch 1: 24 copies per token -> 0,
# 0.75 -> 0.58 ms per token).
IN_PLACE_LOOP = {"xla_cpu_copy_insertion_use_region_analysis": True}
# No YNNPACK fusions: with them XLA fuses each attention's QK^T, softmax and PV into one YNNPACK
# kernel that runs the [batch, heads, q, k] products ~2x slower than its default (Eigen)
# kernels; for the forward-only image program and long prompts that outweighs YNNPACK's
# faster plain GEMMs (batch-8 image program -10%, batch 1 -13% on an AMD EPYC without oneDNN).
# Train steps keep YNNPACK: there its weight-gradient GEMMs win (the step is 8% slower without).
NO_YNN = {"xla_cpu_experimental_ynn_fusion_type": ""}


def compiler_options(devices: Iterable[Any], program: str = "step"
                     ) -> Optional[dict[str, Any]]:
  """XLA:CPU options for one kind of program when every device is a CPU, else None.

  "step": train/eval steps: oneDNN GEMMs where `enabled`, else XLA's defaults (None).
  "prefill": a decoding call's image program (vision tower + resampler) and long prompts
    (`PREFILL_MIN_ROWS`): `FAST_MAX` and `NO_YNN`, and where `enabled` oneDNN (XLA then gives
    the attention products to oneDNN: batch-8 vision tower 70 -> 62 ms; slower in the train
    step, so only here) and 512-bit vectors (-2 ms).
  "decode": the per-token loop and short prompts: XLA's default kernels (oneDNN's per-call
    overhead loses on one-row products) with `FAST_MAX` and `IN_PLACE_LOOP`."""
  if program not in PROGRAMS:
    raise ValueError(f"program={program!r}; choose one of {PROGRAMS}")
  if {device.platform for device in devices} != {"cpu"}:
    return None
  if program == "decode":
    return dict(FAST_MAX, **IN_PLACE_LOOP)
  if not enabled():
    return dict(FAST_MAX, **NO_YNN) if program == "prefill" else None
  options = dict(ONEDNN_OPTIONS)
  if program == "prefill":
    options.update(FAST_MAX, **NO_YNN, xla_cpu_prefer_vector_width=512)
  return options


def configure_process(environ=os.environ) -> None:
  """Appends the memory-lean scheduler flag to XLA_FLAGS unless it is already set there."""
  flags = environ.get("XLA_FLAGS", "")
  if SCHEDULER_FLAG not in flags:
    environ["XLA_FLAGS"] = f"{flags} {SCHEDULER_FLAG}=false".strip()
