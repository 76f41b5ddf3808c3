"""The memory planner: `python -m kosmos_jax.plan` compiles the run's own train step for devices
this host does not have and ends with one JSON line. TPU topologies need libtpu (the `tpu`
extra); those tests skip without it. The paper-size plans are slow (minutes of compile)."""
import json
import os
import subprocess
import sys

import gin
import pytest

from kosmos_jax import plan
from tests.helpers import compile_env
from kosmos_jax.planning import hardware
from kosmos_jax.planning import hlo_flops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "--gin_file=experiments/shapes_tiny.gin"
PAPER = "--gin_file=experiments/kosmos1_pretrain.gin"
KEYS = ("devices", "device_kind", "params_bytes", "optimizer_bytes", "temp_bytes", "peak_bytes",
        "hbm_bytes", "fits", "flops_per_step")
needs_libtpu = pytest.mark.skipif(not hardware.libtpu_available(),
                                  reason="libtpu missing: pip install -e '.[tpu]'")


def _plan(*args, timeout=900):
  env = {k: v for k, v in compile_env.optimised().items() if k != "XLA_FLAGS"}   # real compiles
  out = subprocess.run([sys.executable, "-m", "kosmos_jax.plan", *args], capture_output=True,
                       text=True, timeout=timeout, cwd=ROOT, env={**env, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.strip().splitlines()
  result = json.loads(lines[-1])
  assert all(k in result for k in KEYS), result
  return result, lines


def test_tiny_config_on_eight_virtual_gpus():
  result, lines = _plan(TINY, "--num_devices=8", "--device_kind=H100",
                        "--gin.partitioning.MeshConfig.rules='fsdp'",
                        "--gin.partitioning.MeshConfig.fsdp=4")
  assert result["devices"] == 8 and result["device_kind"] == "NVIDIA H100"
  assert result["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}
  assert result["fits"] and 0 < result["params_bytes"] < result["peak_bytes"]
  assert result["optimizer_bytes"] > result["params_bytes"]      # Adam: two moments
  assert result["hbm_bytes"] == 80e9
  # Loops (scanned layers) counted in full: near the model's own count, not a fraction (the
  # tiny model is element-wise heavy, which XLA counts and the model count does not).
  assert 0.8 < result["flops_vs_model"] < 3.0, result
  assert result["roofline_step_seconds"] > 0
  assert any(line.startswith("per device: parameters") for line in lines)


def test_the_paper_config_gets_placeholders_for_its_data():
  """No data is read, so the task names and MODEL_DIR need not be given."""
  try:
    setup, filled = plan.load_setup(["experiments/kosmos1_pretrain.gin"], [])
  finally:
    gin.clear_config()
  assert {"MODEL_DIR", "TEXT_TASK", "CAPTION_TASK", "INTERLEAVED_TASK"} <= set(filled)
  assert setup.dataset.batch_size * setup.dataset.length == 576 * 2048
  assert setup.model.remat_policy == "minimal" and setup.mesh.fsdp == 8


def test_matmul_flops_count_loop_bodies_per_trip():
  hlo = """HloModule m
%body (p: (s32[], f32[4,8])) -> (s32[], f32[4,8]) {
  %a = f32[4,8]{1,0} parameter(0)
  %w = f32[8,8]{1,0} parameter(1)
  ROOT %d = f32[4,8]{1,0} dot(%a, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}
%cond (p: (s32[], f32[4,8])) -> pred[] {
  ROOT %c = pred[] constant(true)
}
ENTRY %main (x: f32[4,8]) -> f32[4,8] {
  %x = f32[4,8]{1,0} parameter(0)
  %w2 = f32[8,16]{1,0} parameter(1)
  %e = f32[4,16]{1,0} dot(%x, %w2), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT %l = (s32[], f32[4,8]{1,0}) while(%t), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"24"}}
}
"""
  full, once = 2 * 4 * 16 * 8 + 24 * (2 * 4 * 8 * 8), 2 * 4 * 16 * 8 + 2 * 4 * 8 * 8
  assert hlo_flops.matmul_flops(hlo) == full
  assert hlo_flops.loop_factor(hlo) == full / once


def test_missing_libtpu_says_how_to_get_it(monkeypatch):
  monkeypatch.setattr(hardware, "libtpu_available", lambda: False)
  with pytest.raises(ValueError, match=r"pip install -e '\.\[tpu\]'"):
    hardware.topology_devices("v5p:2x2x1")


@pytest.mark.parametrize("topology", ["v7x:2x2", "v5p"])
def test_bad_topology_names(topology):
  with pytest.raises(ValueError, match="CHIP:SHAPE"):
    hardware.chip_for_topology(topology)


def test_one_target_is_required():
  out = subprocess.run([sys.executable, "-m", "kosmos_jax.plan", TINY], capture_output=True,
                       text=True, timeout=300, cwd=ROOT)
  assert out.returncode == 2
  assert "error: give exactly one of --topology" in out.stderr, out.stderr[-2000:]


@needs_libtpu
def test_tiny_config_on_a_tpu_topology():
  result, _ = _plan(TINY, "--topology=v5p:2x2x1")
  assert result["devices"] == 4 and result["device_kind"].startswith("TPU v5")
  assert result["fits"] and result["hbm_bytes"] == 95 * 2**30
  assert result["flops_per_step"] > 0


@needs_libtpu
def test_search_on_a_tpu_topology():
  result, lines = _plan(TINY, "--topology=v5e:2x2", "--search", "--remat_policies=none,full",
                        "--microbatches=1,2", "--max_compiles=2", "--hbm_gib=0.01")
  assert "search" in result and 1 <= len(result["search"]) <= 2
  assert any("tried plans fit" in line for line in lines)


@pytest.mark.slow
@needs_libtpu
@pytest.mark.parametrize("topology", ["v5p:4x4x4", "v5e:4x4"])
def test_paper_config_plans(topology):
  """Acceptance: the 1.6 B paper run (576 x 2048 tokens per step) on v5p-128 and v5e-16."""
  result, _ = _plan(PAPER, f"--topology={topology}", timeout=1800)
  assert result["devices"] == {"v5p:4x4x4": 64, "v5e:4x4": 16}[topology]
  assert result["params_bytes"] > 0 and result["peak_bytes"] > result["params_bytes"]
