"""One memory plan: the run's own train step compiled for given devices, nothing allocated.

The mesh, shardings and step are the ones `train()` uses (`partitioning.make_mesh`,
`trainer.Trainer`, `train.lower_abstract_train_step`); only the devices differ (a TPU topology
from libtpu, or virtual CPU devices). Bytes are per device.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Optional, Sequence

import jax
import numpy as np

from kosmos_jax import train as train_lib
from kosmos_jax.data import dataset_config as dataset_lib
from kosmos_jax.models import config as config_lib
from kosmos_jax.planning import hardware
from kosmos_jax.planning import hlo_flops
from kosmos_jax.training import flops as flops_lib
from kosmos_jax.training import optimizers
from kosmos_jax.training import partitioning
from kosmos_jax.training import trainer as trainer_lib

# libtpu refuses to compile a program larger than HBM: "the total memory required for HLO
# temporaries (253.57G) exceeds available HBM (15.75G)" (older: "Used 120.5G of 95.74G hbm").
_TPU_OOM = re.compile(r"(?:Used|temporaries \() ?([\d.]+)([KMGT])?\)? (?:of|exceeds available "
                      r"HBM \() ?([\d.]+)([KMGT])?")
_UNITS = {None: 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


class StateTooLarge(ValueError):
  """Parameters and optimizer state alone exceed HBM: no need to compile."""

  def __init__(self, message: str, nbytes: int):
    super().__init__(message)
    self.bytes = nbytes


@dataclasses.dataclass(frozen=True)
class Setup:
  """What `train()` is configured with (from gin), minus the run directory and data."""
  model: config_lib.KosmosConfig
  dataset: dataset_lib.DatasetConfig
  mesh: partitioning.MeshConfig
  optimizer: optimizers.OptimizerConfig
  trainer: trainer_lib.TrainerConfig


@dataclasses.dataclass(frozen=True)
class Candidate:
  """The knobs the search turns: remat policy, microbatch count, ICI mesh and rule preset."""
  remat: str
  microbatches: int
  data: int
  fsdp: int
  tensor: int
  rules: str

  @classmethod
  def of(cls, setup: Setup) -> "Candidate":
    m = setup.mesh
    return cls(setup.model.remat_policy, setup.trainer.num_microbatches, m.data, m.fsdp,
               m.tensor, m.rules)

  def label(self) -> str:
    return (f"remat={self.remat} microbatches={self.microbatches} "
            f"mesh=data:{self.data},fsdp:{self.fsdp},tensor:{self.tensor} rules={self.rules}")


def configure(setup: Setup, c: Candidate) -> Setup:
  return dataclasses.replace(
      setup, model=dataclasses.replace(setup.model, remat_policy=c.remat),
      trainer=dataclasses.replace(setup.trainer, num_microbatches=c.microbatches),
      mesh=dataclasses.replace(setup.mesh, data=c.data, fsdp=c.fsdp, tensor=c.tensor,
                               rules=c.rules))


def _shard_bytes(abstract_tree: Any) -> int:
  total = 0
  for leaf in jax.tree_util.tree_leaves(abstract_tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.shape else ()
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return total


def build_trainer(setup: Setup, devices: Sequence[jax.Device]) -> trainer_lib.Trainer:
  """The run's Trainer on a mesh over `devices` (raises ValueError if the batch cannot split)."""
  mesh = partitioning.make_mesh(setup.mesh, devices)
  partitioning.check_batch_size(setup.dataset.batch_size, mesh, setup.trainer.num_microbatches)
  return trainer_lib.Trainer(setup.model, setup.optimizer, setup.trainer, mesh, setup.mesh.rules)


def state_bytes(run_trainer: trainer_lib.Trainer) -> tuple[int, int]:
  """(parameter bytes, optimizer-state bytes) per device, from the state's shardings."""
  state = run_trainer.factory.abstract_with_shardings()
  return _shard_bytes(state.params), _shard_bytes(state.opt_state) + _shard_bytes(state.step)


def _oom_bytes(message: str) -> Optional[tuple[float, float]]:
  match = _TPU_OOM.search(message)
  if not match:
    return None
  used, used_unit, hbm, hbm_unit = match.groups()
  return float(used) * _UNITS[used_unit], float(hbm) * _UNITS[hbm_unit]


def plan(setup: Setup, devices: Sequence[jax.Device], chip: hardware.Chip,
         hbm_bytes: Optional[float] = None, precheck: bool = False) -> dict[str, Any]:
  """Compiles the train step of `setup` for `devices`; the plan as a JSON-ready dict.
  precheck: raise StateTooLarge before compiling when the state alone exceeds HBM."""
  run_trainer = build_trainer(setup, devices)
  params_bytes, optimizer_bytes = state_bytes(run_trainer)
  hbm = hbm_bytes or chip.hbm_bytes
  if precheck and params_bytes + optimizer_bytes > hbm:
    raise StateTooLarge(f"state alone {(params_bytes + optimizer_bytes) / 2**30:.1f} GiB",
                        params_bytes + optimizer_bytes)
  ds, n = setup.dataset, len(devices)
  model_flops = flops_lib.train_flops_per_step(
      setup.model, ds.batch_size, ds.length, ds.max_images, run_trainer.vision_trainable) / n
  result: dict[str, Any] = {
      "devices": n, "device_kind": chip.device_kind, "chip": chip.name,
      "mesh": dict(run_trainer.mesh.shape), "rules": setup.mesh.rules,
      "remat_policy": setup.model.remat_policy,
      "num_microbatches": setup.trainer.num_microbatches,
      "batch_size": ds.batch_size, "tokens_per_step": ds.batch_size * ds.length,
      "params_bytes": params_bytes, "optimizer_bytes": optimizer_bytes, "hbm_bytes": hbm,
      "model_flops_per_step": model_flops}
  abstract = train_lib.lower_abstract_train_step(run_trainer, ds, setup.model)
  try:
    compiled = abstract.lowered.compile()
  except Exception as e:  # pylint: disable=broad-except
    oom = _oom_bytes(str(e))
    if oom is None:
      raise
    return result | {"temp_bytes": None, "peak_bytes": oom[0], "fits": False,
                     "compiler_hbm_bytes": oom[1], "flops_per_step": None,
                     "note": "the TPU compiler ran out of HBM; peak_bytes is what it needed"}
  return result | _compiled_numbers(compiled, hbm, chip, model_flops)


def _compiled_numbers(compiled, hbm: float, chip: hardware.Chip, model_flops: float):
  """Memory, FLOPs and the roofline time of a compiled step (all per device)."""
  memory = compiled.memory_analysis()
  peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes
          - memory.alias_size_in_bytes + memory.temp_size_in_bytes
          + memory.generated_code_size_in_bytes)
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  xla_flops = float(cost.get("flops", 0.0))
  # cost_analysis counts loop bodies once: scale its FLOPs and HBM traffic by the loops' trips.
  loops = hlo_flops.loop_factor(compiled.as_text())
  flops = xla_flops * loops
  bytes_accessed = float(cost.get("bytes accessed", 0.0)) * loops
  return {
      "argument_bytes": memory.argument_size_in_bytes,
      "output_bytes": memory.output_size_in_bytes, "alias_bytes": memory.alias_size_in_bytes,
      "temp_bytes": memory.temp_size_in_bytes,
      "code_bytes": memory.generated_code_size_in_bytes,
      "peak_bytes": peak, "fits": bool(peak <= hbm),
      "flops_per_step": flops, "xla_cost_analysis_flops": xla_flops, "loop_factor": loops,
      "flops_vs_model": flops / model_flops if model_flops else None,
      "bytes_accessed": bytes_accessed,
      "roofline_step_seconds": hardware.roofline_seconds(flops, bytes_accessed, chip)}
