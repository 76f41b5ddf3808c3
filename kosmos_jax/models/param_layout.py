"""Moves a parameter tree between the scanned layout (`<tower>/layers/...` with a leading layer
axis, one compiled layer body) and the unrolled one (`<tower>/layers_0..N-1`, as HF checkpoints)."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def is_scanned(params: Any) -> bool:
  """True if the text tower's layers are stacked under `layers`."""
  return "layers" in params.get("text", {})


def unstack_layers(params: Any) -> Any:
  """Scanned params (`<tower>/layers/...` with a leading axis) -> unrolled (`layers_N`)."""
  def convert(tree):
    if not isinstance(tree, dict):
      return tree
    out = {}
    for key, value in tree.items():
      if key == "layers":
        count = jax.tree_util.tree_leaves(value)[0].shape[0]
        for i in range(count):
          out[f"layers_{i}"] = jax.tree_util.tree_map(lambda x, i=i: x[i], value)
      else:
        out[key] = convert(value)
    return out
  return convert(jax.tree_util.tree_map(lambda x: x, params))


def stack_layers(params: Any) -> Any:
  """Unrolled params (`layers_N`) -> scanned (`layers` with a leading axis)."""
  def convert(tree):
    if not isinstance(tree, dict):
      return tree
    layer_keys = sorted((k for k in tree if k.startswith("layers_")),
                        key=lambda k: int(k.split("_")[1]))
    out = {k: convert(v) for k, v in tree.items() if not k.startswith("layers_")}
    if layer_keys:
      out["layers"] = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs),
                                             *[tree[k] for k in layer_keys])
    return out
  return convert(params)
