"""Chips the planner sizes for (HBM, bandwidth, peak FLOP/s) and the devices it compiles for.

A TPU topology ("v5p:4x4x4") comes from libtpu's ahead-of-time compiler, which runs on a CPU host
without any TPU (the optional extra `pip install -e '.[tpu]'`). GPUs have no such compiler in
JAX: `--num_devices=N` compiles for N virtual CPU devices and sizes against the GPU's HBM.
"""
from __future__ import annotations

import dataclasses
import os
import types
from typing import Optional, Sequence

import jax

from kosmos_jax.training import flops as flops_lib

TPU_EXTRA_HINT = ("the TPU compiler (libtpu) is not installed: pip install -e '.[tpu]' "
                  "(about 700 MB), or size for virtual CPU devices with --num_devices=N")


@dataclasses.dataclass(frozen=True)
class Chip:
  """Public per-chip numbers (Cloud TPU and NVIDIA spec sheets): HBM bytes and bytes/s."""
  name: str
  device_kind: str          # jax's device_kind (the peak FLOP/s key of training/flops.py)
  hbm_bytes: float
  hbm_bandwidth: float

  @property
  def peak_flops(self) -> float:
    device = types.SimpleNamespace(device_kind=self.device_kind)
    return flops_lib.peak_flops_per_device(device)  # bf16 dense, one definition


CHIPS = {c.name: c for c in (
    Chip("v4", "TPU v4", 32 * 2**30, 1.2e12),
    Chip("v5e", "TPU v5 lite", 16 * 2**30, 8.19e11),
    Chip("v5p", "TPU v5", 95 * 2**30, 2.765e12),
    Chip("v6e", "TPU v6 lite", 32 * 2**30, 1.64e12),
    Chip("H100", "NVIDIA H100", 80e9, 3.35e12),
    Chip("H200", "NVIDIA H200", 141e9, 4.8e12),
)}
TPU_CHIPS = ("v4", "v5e", "v5p", "v6e")
GPU_CHIPS = ("H100", "H200")


def chip_for_topology(topology: str) -> Chip:
  name = topology.split(":")[0]
  if name not in TPU_CHIPS or ":" not in topology:
    raise ValueError(f"--topology={topology!r}: write CHIP:SHAPE with CHIP one of "
                     f"{list(TPU_CHIPS)}, e.g. v5p:4x4x4 or v5e:16x16")
  return CHIPS[name]


def gpu_chip(name: str) -> Chip:
  if name not in GPU_CHIPS:
    raise ValueError(f"--device_kind={name!r}: choose one of {list(GPU_CHIPS)}")
  return CHIPS[name]


def libtpu_available() -> bool:
  import importlib.util  # pylint: disable=g-import-not-at-top
  return importlib.util.find_spec("libtpu") is not None


def topology_devices(topology: str) -> Sequence[jax.Device]:
  """The TPU devices of `topology`, for compiling only (nothing can run on them here)."""
  chip_for_topology(topology)
  if not libtpu_available():
    raise ValueError(TPU_EXTRA_HINT)
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")   # no GCE metadata server on a CPU host
  # Compiling only: several planners (parallel tests) may load libtpu at once.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    return topologies.get_topology_desc(platform="tpu", topology_name=topology).devices
  except Exception as e:  # libtpu's errors (bad shape) are RuntimeError / XlaRuntimeError
    raise ValueError(f"--topology={topology!r}: libtpu says: {' '.join(str(e).split())}") from e


def cpu_devices(num_devices: int) -> Sequence[jax.Device]:
  """`num_devices` virtual CPU devices (the planner's GPU stand-ins)."""
  devices = jax.devices("cpu")
  if len(devices) != num_devices:
    raise ValueError(f"--num_devices={num_devices} but this process has {len(devices)} CPU "
                     "devices: the flag must take effect before JAX starts (run the planner "
                     "as its own process)")
  return devices


def roofline_seconds(flops: float, bytes_accessed: float, chip: Chip) -> Optional[float]:
  """A lower bound on one step: the larger of compute time and HBM traffic time."""
  if not chip.peak_flops:
    return None
  return max(flops / chip.peak_flops, bytes_accessed / chip.hbm_bandwidth)
