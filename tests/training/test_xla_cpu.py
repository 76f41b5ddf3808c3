"""The oneDNN compile options of the train/eval steps and of decoding's prefill programs
(kosmos_jax.training.xla_cpu): on for CPU devices only, off with KOSMOS_JAX_CPU_ONEDNN=0, and
every model variant we ship compiles with them.

XLA's oneDNN fusion aborts the whole process on the patterns it cannot compile, so the compile
matrix runs in a child process: an abort is then a failed test naming the variant, not a dead
test worker."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from kosmos_jax.models import kosmos
from kosmos_jax.training import xla_cpu
from kosmos_jax.training import optimizers
from kosmos_jax.training import partitioning
from kosmos_jax.training import trainer as trainer_lib
from tests.helpers import compile_env
from tests.helpers import tiny


def test_options_only_for_cpu_devices_and_opt_out(monkeypatch):
  monkeypatch.setenv(xla_cpu.OPT_OUT_ENV, "1")             # forced on, no probe
  assert xla_cpu.compiler_options(jax.devices("cpu")) == xla_cpu.ONEDNN_OPTIONS

  class Accelerator:
    platform = "tpu"
  assert xla_cpu.compiler_options([Accelerator()]) is None
  assert xla_cpu.compiler_options(jax.devices("cpu") + [Accelerator()]) is None
  prefill = xla_cpu.compiler_options(jax.devices("cpu"), program="prefill")
  assert prefill == {**xla_cpu.ONEDNN_OPTIONS, **xla_cpu.FAST_MAX, **xla_cpu.NO_YNN,
                     "xla_cpu_prefer_vector_width": 512}
  assert xla_cpu.NO_YNN == {"xla_cpu_experimental_ynn_fusion_type": ""}
  decode = {**xla_cpu.FAST_MAX, **xla_cpu.IN_PLACE_LOOP}
  assert xla_cpu.compiler_options(jax.devices("cpu"), program="decode") == decode
  assert xla_cpu.compiler_options([Accelerator()], program="prefill") is None
  with pytest.raises(ValueError, match="program='loop'; choose one of"):
    xla_cpu.compiler_options(jax.devices("cpu"), program="loop")
  for off in ("0", "false", "OFF"):
    monkeypatch.setenv(xla_cpu.OPT_OUT_ENV, off)
    assert xla_cpu.compiler_options(jax.devices("cpu")) is None
    assert (xla_cpu.compiler_options(jax.devices("cpu"), program="prefill")
            == {**xla_cpu.FAST_MAX, **xla_cpu.NO_YNN})
    # The loop never uses oneDNN: its options stay.
    assert xla_cpu.compiler_options(jax.devices("cpu"), program="decode") == decode


def test_unset_setting_follows_the_probe(monkeypatch):
  monkeypatch.delenv(xla_cpu.OPT_OUT_ENV, raising=False)
  for exact in (True, False):
    monkeypatch.setattr(xla_cpu, "onednn_is_exact", lambda exact=exact: exact)
    assert xla_cpu.enabled() is exact
    assert (xla_cpu.compiler_options(jax.devices("cpu")) is not None) is exact


def test_probe_is_a_cached_verdict_on_this_cpu():
  verdict = xla_cpu.onednn_is_exact()
  assert isinstance(verdict, bool)
  assert xla_cpu.onednn_is_exact.cache_info().currsize == 1
  # Its products compile with and without oneDNN (none is a no-op for the fusion).
  assert len(xla_cpu._epilogue_probes()) == 4  # pylint: disable=protected-access


def _step_metrics(config, batch, setting, monkeypatch):
  if setting is None:
    monkeypatch.delenv(xla_cpu.OPT_OUT_ENV, raising=False)
  else:
    monkeypatch.setenv(xla_cpu.OPT_OUT_ENV, setting)
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=1), jax.devices()[:1])
  trainer = trainer_lib.Trainer(config, optimizers.OptimizerConfig(learning_rate=1e-3),
                                trainer_lib.TrainerConfig(total_steps=10), mesh, "dp")
  _, metrics = trainer.train_step(trainer.init_state(),
                                  partitioning.global_batch(batch, mesh), jax.random.key(0))
  return {k: float(v) for k, v in metrics.items()}


def test_train_step_as_configured_matches_default_kernels(monkeypatch):
  """The step as a user gets it (oneDNN where the probe passed) against XLA's default kernels:
  the same loss and gradient norm to float rounding. (Forced oneDNN on a CPU where the probe
  fails gives a gradient norm ~5e-5 off here, and 2% off at the benchmark's shape.)"""
  config = tiny.tiny_config()
  batch = tiny.converter_batch(config, batch=2, length=48)
  default = _step_metrics(config, batch, "0", monkeypatch)
  configured = _step_metrics(config, batch, None, monkeypatch)
  assert set(default) == set(configured)
  for name in ("loss_sum", "correct_sum", "grad_norm"):
    np.testing.assert_allclose(configured[name], default[name], rtol=1e-5)


def test_image_program_as_configured_matches_default_kernels():
  """Decoding's image program (vision tower + latent-query connector, the prefill options) at
  batch 2, as configured vs XLA's defaults. With oneDNN forced where the probe fails, the
  connector's softmax normaliser, fused into its PV product, gave values ~1e3 times off."""
  config = tiny.tiny_config()
  params = jax.jit(lambda r: kosmos.init_params(config, r))(jax.random.key(0))
  images = tiny.image_block_batch(config, 2, 24, [[1], [3]])["images"]
  encode = lambda p, x: kosmos.Kosmos(config).apply({"params": p}, x, method="encode_images")
  options = xla_cpu.compiler_options(jax.devices("cpu"), program="prefill")
  expected = np.asarray(jax.jit(encode)(params, images))
  actual = np.asarray(jax.jit(encode, compiler_options=options)(params, images))
  np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


CHILD = r"""
import sys, jax
import flax.linen as nn
from kosmos_jax.inference import decoding
from kosmos_jax.models import kosmos
from kosmos_jax.training import optimizers, partitioning, trainer as trainer_lib, xla_cpu
from tests.helpers import tiny
if not xla_cpu.onednn_is_exact():      # this CPU never uses oneDNN unless forced
  print("inexact"); sys.exit(0)
xla_cpu.PREFILL_MIN_ROWS = 0          # the prompt program with oneDNN too, as for long prompts
VARIANTS = {
    "tiny (demo model)": {},
    "xPos + Sub-LN, frozen vision but last layer": {"text.xpos": True, "text.subln": True,
                                                    "vision_trainable": "last_layer"},
    "perceiver connector, remat dots, rolled scan": {
        "connector.kind": "perceiver", "connector.num_layers": 2, "remat_policy": "dots",
        "scan_unroll": 1},
    "frozen vision, dropout, remat full, no scan": {
        "vision_trainable": "none", "text.dropout": 0.1, "text.attention_dropout": 0.1,
        "connector.attention_dropout": 0.1, "remat_policy": "full", "scan_layers": False},
    "bfloat16": {"dtype": "bfloat16"},
}
mesh = partitioning.make_mesh(partitioning.MeshConfig(data=1), jax.devices()[:1])
for index, (name, overrides) in enumerate(VARIANTS.items()):
  config = tiny.tiny_config(**{k.replace(".", "__"): v for k, v in overrides.items()})
  trainer = trainer_lib.Trainer(config, optimizers.OptimizerConfig(learning_rate=1e-3),
                                trainer_lib.TrainerConfig(total_steps=10), mesh, "dp")
  state = trainer.factory.abstract
  batch = partitioning.global_batch(tiny.converter_batch(config, batch=2, length=48), mesh)
  print("compiling", name, flush=True)
  with jax.set_mesh(mesh), nn.logical_axis_rules(trainer.rules):
    trainer._train_step.lower(state, batch, jax.random.key(0)).compile()
    trainer._eval_step.lower(state.params, batch).compile()
  # Decoding's image and prompt programs (oneDNN + YNNPACK off): greedy for every variant,
  # beam (the same model programs on a beam-expanded batch) for the first.
  params = jax.jit(lambda r: kosmos.init_params(config, r))(jax.random.key(0))
  prompt = tiny.image_block_batch(config, 2, 24, [[1], [3]])
  for strategy in ("greedy", "beam") if index == 0 else ("greedy",):
    decoding.decode(kosmos.Kosmos(config), params, prompt["tokens"],
                    decoding.DecodeConfig(strategy=strategy, max_new_tokens=3, beam_size=2),
                    images=prompt["images"], image_token_mask=prompt["image_token_mask"])
  print("ok", name, flush=True)
"""


def test_every_variant_compiles_with_onednn():
  """On CPUs where the probe finds oneDNN inexact, runs never use it by default: skipped."""
  env = {**compile_env.optimised(), xla_cpu.OPT_OUT_ENV: "1"}   # the optimising compiler
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  result = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          env=env, cwd=root, timeout=600)
  if result.returncode == 0 and result.stdout.startswith("inexact"):
    pytest.skip("XLA's oneDNN fusion is inexact on this CPU: off unless forced")
  compiled = [line[3:] for line in result.stdout.splitlines() if line.startswith("ok ")]
  started = [line[10:] for line in result.stdout.splitlines() if line.startswith("compiling ")]
  assert result.returncode == 0, (
      f"oneDNN compile failed for {started[-1] if started else '?'!r} (compiled: {compiled}); "
      f"stderr tail: {result.stderr[-1500:]}")
  assert len(compiled) == 5


def test_configure_process_appends_the_scheduler_flag_once_and_keeps_the_users():
  environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  xla_cpu.configure_process(environ)
  xla_cpu.configure_process(environ)
  assert environ["XLA_FLAGS"] == ("--xla_force_host_platform_device_count=8 "
                                  "--xla_cpu_enable_concurrency_optimized_scheduler=false")
  chosen = {"XLA_FLAGS": "--xla_cpu_enable_concurrency_optimized_scheduler=true"}
  xla_cpu.configure_process(chosen)
  assert chosen["XLA_FLAGS"] == "--xla_cpu_enable_concurrency_optimized_scheduler=true"
  empty = {}
  xla_cpu.configure_process(empty)
  assert empty["XLA_FLAGS"] == "--xla_cpu_enable_concurrency_optimized_scheduler=false"
