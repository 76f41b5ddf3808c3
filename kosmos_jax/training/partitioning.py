"""Device mesh ('data', 'fsdp', 'tensor') and logical-axis rule presets.

The model names every parameter and large activation with logical axes (`embed`, `mlp`, `heads`,
`vocab`, `vision_embed`, ...). A rule preset maps those names to mesh axes; flax applies rules in
order and never uses a mesh axis twice in one array, so `batch` (listed first) claims `fsdp` on
activations while parameters, which have no batch axis, are sharded over it (FSDP / ZeRO-3).

Presets:
  dp       parameters replicated, batch over data x fsdp
  fsdp     + parameters sharded over `fsdp` on their embed dimension
  fsdp_tp  + heads / mlp / vocab sharded over `tensor` (Megatron-style tensor parallelism)
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
import numpy as np

from kosmos_jax.models import param_layout

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

_ACTIVATIONS = (
    ("batch", BATCH_AXES),
    ("length", None),
    ("vision_tokens", None),
    ("image_tokens", None),
    ("layers", None),
    ("kv", None),
)
_FSDP = (
    ("embed", "fsdp"),
    ("vision_embed", "fsdp"),
)
_TENSOR = (
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("vision_heads", "tensor"),
    ("vision_mlp", "tensor"),
)
_REPLICATED = tuple((name, None) for name in
                    ("embed", "vision_embed", "heads", "mlp", "vocab", "vision_heads",
                     "vision_mlp"))

RULE_PRESETS: dict[str, tuple[tuple[str, Any], ...]] = {
    "dp": _ACTIVATIONS + _REPLICATED,
    "fsdp": _ACTIVATIONS + _FSDP + _REPLICATED,
    "fsdp_tp": _ACTIVATIONS + _TENSOR + _FSDP + _REPLICATED,
}


def get_rules(name: str) -> tuple[tuple[str, Any], ...]:
  if name not in RULE_PRESETS:
    raise ValueError(f"Unknown partitioning rules {name!r}; choose one of {sorted(RULE_PRESETS)}")
  return RULE_PRESETS[name]


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh axis sizes within a slice (ICI) and across slices (DCN). -1 fills the rest.

  Single slice: leave dcn_* at 1. Multi-slice (e.g. 4 TPU slices): dcn_data=4 puts data
  parallelism across slices and keeps fsdp/tensor traffic on the fast in-slice links.
  """
  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  dcn_data: int = 1
  dcn_fsdp: int = 1
  dcn_tensor: int = 1
  rules: str = "fsdp"


def _fill(shape: Sequence[int], total: int, what: str) -> tuple[int, ...]:
  shape = list(shape)
  unknown = [i for i, s in enumerate(shape) if s == -1]
  if len(unknown) > 1:
    raise ValueError(f"At most one {what} mesh axis may be -1, got {dict(zip(MESH_AXES, shape))}")
  known = math.prod(s for s in shape if s != -1)
  if any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"{what} mesh axis sizes must be positive or -1, got {shape}")
  if unknown:
    if total % known:
      raise ValueError(f"Cannot fill the {what} mesh: {total} devices are not divisible by the "
                       f"fixed axes {dict(zip(MESH_AXES, shape))} (product {known})")
    shape[unknown[0]] = total // known
  if math.prod(shape) != total:
    raise ValueError(
        f"The {what} mesh {dict(zip(MESH_AXES, shape))} has {math.prod(shape)} devices but "
        f"{total} are available; set one axis to -1 to fill the rest")
  return tuple(shape)


def make_mesh(config: MeshConfig, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """Builds the ('data', 'fsdp', 'tensor') mesh with Auto axes (Flax logical partitioning needs
  Auto; jax.make_mesh defaults to Explicit)."""
  devices = list(devices if devices is not None else jax.devices())
  dcn = (config.dcn_data, config.dcn_fsdp, config.dcn_tensor)
  num_slices = math.prod(dcn)
  if len(devices) % num_slices:
    raise ValueError(f"{len(devices)} devices cannot be split into {num_slices} DCN slices {dcn}")
  ici = _fill((config.data, config.fsdp, config.tensor), len(devices) // num_slices, "ICI")
  if num_slices > 1:
    device_array = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
  elif devices[0].platform == "tpu":
    # Topology-aware on TPU. Splitting physical axes lets e.g. fsdp=8 live on a 4x4x4 v5p
    # torus (otherwise every mesh axis must be a product of whole torus axes).
    device_array = mesh_utils.create_device_mesh(ici, devices, allow_split_physical_axes=True)
  else:
    device_array = np.asarray(devices).reshape(ici)
  return Mesh(device_array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_shardings(tree: Any, mesh: Mesh, rules) -> Any:
  """NamedShardings for a tree of boxed (nn.Partitioned) abstract values; unboxed leaves are
  replicated."""
  specs = nn.get_partition_spec(tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Batch dimension split over data x fsdp; every other dimension replicated."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_divisor(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def check_batch_size(batch_size: int, mesh: Mesh, num_microbatches: int = 1) -> None:
  per_micro = batch_size // max(num_microbatches, 1)
  if batch_size % max(num_microbatches, 1) or per_micro % batch_divisor(mesh):
    raise ValueError(
        f"Global batch {batch_size} with {num_microbatches} microbatch(es) gives "
        f"{per_micro} rows per microbatch, which must be divisible by data x fsdp = "
        f"{batch_divisor(mesh)}; change BATCH_SIZE, the microbatch count or the mesh")


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows -> global arrays sharded over the batch axes (multi-host safe)."""
  sharding = data_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def describe(state_shardings: Any, abstract_state: Any, mesh: Mesh, rules_name: str) -> str:
  """A human-readable start-up summary: mesh, rules, per-parameter sharding, bytes per device."""
  lines = [f"mesh: {dict(mesh.shape)} over {mesh.devices.size} devices "
           f"({mesh.devices.flat[0].device_kind}); rules: {rules_name}"]
  total_bytes = 0
  per_device = 0
  flat_shard = jax.tree_util.tree_flatten_with_path(state_shardings)[0]
  flat_value = jax.tree_util.tree_leaves(abstract_state)
  rows = []
  for (path, sharding), value in zip(flat_shard, flat_value):
    name = param_layout.path_name(path)
    nbytes = math.prod(value.shape) * np.dtype(value.dtype).itemsize
    shard_shape = sharding.shard_shape(value.shape) if value.shape else ()
    shard_bytes = math.prod(shard_shape) * np.dtype(value.dtype).itemsize
    total_bytes += nbytes
    per_device += shard_bytes
    spec = getattr(sharding, "spec", PartitionSpec())
    rows.append(f"  {name:<70} {str(tuple(value.shape)):<24} {str(spec):<40} {shard_bytes:>12,} B")
  lines.append(f"train state: {total_bytes / 2**20:,.1f} MiB in total, "
               f"{per_device / 2**20:,.1f} MiB per device")
  lines.append("per-array sharding (name, shape, PartitionSpec, bytes per device):")
  return "\n".join(lines + rows)
