"""XLA:CPU settings for training and decoding on CPU: matrix products through oneDNN, a
memory-lean schedule.

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
the test suite compiles every model variant with these options. oneDNN's kernels are
deterministic for a given process layout, but not bit-identical across layouts (a run resumed
on 1 x 8 devices from a 2 x 4 checkpoint matches to float rounding, ~1e-7 relative).
KOSMOS_JAX_CPU_ONEDNN=0 turns the options off (XLA's default CPU GEMMs: slower, bit-identical
across layouts).

XLA:CPU's default instruction scheduler orders a program for concurrency and keeps more
activations live at once; the benchmark step needs 785 instead of 875 MiB without it, at the
same speed. XLA reads that setting only from the process's XLA_FLAGS, so `configure_process`
(run when `kosmos_jax` is imported, before JAX starts its CPU backend) appends it there unless
the user's XLA_FLAGS already choose.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Optional

OPT_OUT_ENV = "KOSMOS_JAX_CPU_ONEDNN"
ONEDNN_OPTIONS = {"xla_cpu_use_onednn": True,
                  "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}
SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"


def enabled() -> bool:
  """False when KOSMOS_JAX_CPU_ONEDNN is set to 0/false/no/off."""
  return os.environ.get(OPT_OUT_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


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


def compiler_options(devices: Iterable[Any], program: str = "step"
                     ) -> Optional[dict[str, Any]]:
  """XLA:CPU options for one kind of program when every device is a CPU (and not opted out),
  else None.

  "step": train/eval steps, oneDNN GEMMs.
  "prefill": a decoding call's image program (vision tower + resampler) and long prompts
    (`PREFILL_MIN_ROWS`): oneDNN, YNNPACK off (XLA then gives the attention products to oneDNN
    instead of fusing them with the softmax into one YNNPACK kernel: batch-8 vision tower 70 ->
    62 ms; slower in the train step, so only here), `FAST_MAX`, 512-bit vectors (-2 ms).
  "decode": the per-token loop and short prompts: XLA's default kernels (oneDNN's per-call
    overhead loses on one-row products) with `FAST_MAX` and `IN_PLACE_LOOP`."""
  if program not in PROGRAMS:
    raise ValueError(f"program={program!r}; choose one of {PROGRAMS}")
  platforms = {device.platform for device in devices}
  if platforms != {"cpu"} or not enabled():
    return None
  if program == "decode":
    return dict(FAST_MAX, **IN_PLACE_LOOP)
  options = dict(ONEDNN_OPTIONS)
  if program == "prefill":
    options.update(FAST_MAX, xla_cpu_experimental_ynn_fusion_type="",
                   xla_cpu_prefer_vector_width=512)
  return options


def configure_process(environ=os.environ) -> None:
  """Appends the memory-lean scheduler flag to XLA_FLAGS unless it is already set there."""
  flags = environ.get("XLA_FLAGS", "")
  if SCHEDULER_FLAG not in flags:
    environ["XLA_FLAGS"] = f"{flags} {SCHEDULER_FLAG}=false".strip()
