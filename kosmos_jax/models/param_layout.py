"""Parameter-tree layout: names of parameters by path, and the two layer layouts, scanned
(`<tower>/layers/...` with a leading layer axis, one compiled layer body) and unrolled
(`<tower>/layers_0..N-1`, as HF checkpoints), with moves between them."""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp


def path_name(path) -> str:
  """"text/layers/mlp/wi/kernel" for a jax tree path (dict keys, attributes or indices)."""
  return "/".join(str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path)


def flat_paths(tree: Any) -> dict[str, Any]:
  """{"a/b/c": leaf} for every leaf of a nested tree."""
  return {path_name(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def layer_layout(params: Any) -> Optional[str]:
  """"scanned" or "unrolled" by the text tower's layer keys; None for a tree without them."""
  text = params.get("text", {}) if isinstance(params, dict) else {}
  if "layers" in text:
    return "scanned"
  if "layers_0" in text:
    return "unrolled"
  return None


def is_scanned(params: Any) -> bool:
  """True if the text tower's layers are stacked under `layers`."""
  return layer_layout(params) == "scanned"


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
