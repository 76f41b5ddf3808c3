"""Train-step throughput of the 1.6 B preset on a GPU/TPU host: tokens/s/device, step time, MFU.

  bash benchmarks/accelerator.sh [--dry_run]       # or: python -m benchmarks.run --accelerator

The `kosmos1` preset (gin/models/kosmos1_1p6b.gin: 24 x 2048 decoder, CLIP ViT-L/14, 64
latents) in bf16 activations with fp32 master weights, FSDP over every local device, 2048-token
rows with one image each, the paper's trainability (vision frozen but its last layer). It tries
the candidates of `plan()` in order (largest per-device batch first, then stronger remat) and
reports the first that compiles and runs within device memory: the largest that fits.
`--dry_run` prints the plan and runs nothing (no accelerator needed).
"""
from __future__ import annotations

import json
import os
import statistics
import time

import jax

from benchmarks import train_step
from kosmos_jax.models import config as config_lib
from kosmos_jax.training import flops as flops_lib
from kosmos_jax.training import optimizers
from kosmos_jax.training import partitioning
from kosmos_jax.training import trainer as trainer_lib

LENGTH = 2048
BATCH_PER_DEVICE = (16, 8, 4, 2, 1)
REMAT = ("minimal", "full")


def plan(preset: str, num_devices: int) -> list[dict]:
  """Candidate runs, most throughput first: global batch, remat policy, model overrides."""
  return [{"preset": preset, "global_batch": b * num_devices, "batch_per_device": b,
           "length": LENGTH, "images_per_row": 1, "remat_policy": r, "dtype": "bfloat16",
           "mesh": {"data": 1, "fsdp": num_devices}, "rules": "fsdp", "steps": 5, "warmup": 2}
          for r in REMAT for b in BATCH_PER_DEVICE]


def run_candidate(c: dict) -> dict:
  """Builds, compiles and times one candidate; raises on out-of-memory."""
  config = config_lib.get_config(c["preset"], {"dtype": c["dtype"],
                                               "remat_policy": c["remat_policy"]})
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=1, fsdp=-1))
  trainer = trainer_lib.Trainer(config, optimizers.OptimizerConfig(learning_rate=1e-4),
                                trainer_lib.TrainerConfig(total_steps=1000), mesh, c["rules"])
  holder = {"state": trainer.init_state()}
  data = partitioning.global_batch(
      train_step.synthetic_batch(config, c["global_batch"], c["length"], c["images_per_row"]),
      mesh)
  rng = jax.random.key(0)

  def step():
    holder["state"], metrics = trainer.train_step(holder["state"], data, rng)
    jax.block_until_ready(metrics)
  start = time.perf_counter()
  step()
  first = time.perf_counter() - start
  seconds = statistics.median(train_step.time_steps(step, c["warmup"] - 1, c["steps"]))
  n = mesh.devices.size
  flops = flops_lib.train_flops_per_step(config, c["global_batch"], c["length"],
                                         c["images_per_row"],
                                         vision_trainable=trainer.vision_trainable)
  peak = flops_lib.peak_flops_per_device(jax.devices()[0])
  achieved = flops / seconds / n
  return {**c, "devices": n, "device_kind": jax.devices()[0].device_kind,
          "step_seconds": seconds, "first_step_seconds": first,
          "tokens_per_sec_per_device": c["global_batch"] * c["length"] / seconds / n,
          "model_tflops_per_sec_per_device": achieved / 1e12,
          "mfu": None if not peak else achieved / peak}


def _is_oom(e: Exception) -> bool:
  text = str(e)
  return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def main(preset: str, out_dir: str, dry_run: bool = False) -> dict | None:
  """Runs (or with dry_run prints) the plan; writes accelerator.json in `out_dir`."""
  devices = jax.devices() if not dry_run else []
  num = len(devices) or 1
  candidates = plan(preset, num)
  if dry_run:
    print(f"dry run: {jax.default_backend()} backend here; on the accelerator host each "
          "candidate below is tried in order until one fits:")
    for c in candidates:
      print("  " + json.dumps(c))
    return {"dry_run": True, "plan": candidates}
  if devices[0].platform == "cpu":
    raise SystemExit("--accelerator needs a GPU or TPU backend (jax.devices() is CPU); "
                     "use --dry_run to see the plan")
  result = None
  for c in candidates:
    try:
      result = run_candidate(c)
      break
    except Exception as e:  # pylint: disable=broad-except
      if not _is_oom(e):
        raise
      print(f"does not fit: batch/device {c['batch_per_device']}, remat {c['remat_policy']}")
  if result is None:
    raise SystemExit("no candidate fits in device memory")
  print(json.dumps(result, indent=1))
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "accelerator.json"), "w") as f:
    json.dump(result, f, indent=1)
  return result
