"""Prints a model's parameter table (path, shape, logical axes, count) and the per-tower split.

    python -m kosmos_jax.models.summary --model=kosmos1 [--override=text.num_layers=4 ...]

Shapes come from `jax.eval_shape`, so the 1.6B preset is summarised without allocating it.
"""
from __future__ import annotations

import ast
import math
from typing import Any, Iterable, Sequence

from absl import app
from absl import flags
import flax.linen as nn
import jax

from kosmos_jax.models import config as config_lib
from kosmos_jax.models import kosmos
from kosmos_jax.models import param_layout

TOWERS = {"text": "language model", "vision": "vision encoder", "connector": "connector"}


def parameter_rows(config: config_lib.KosmosConfig) -> list[tuple[str, tuple[int, ...], tuple, int]]:
  """(path, shape, logical axes, count) for every parameter, from abstract shapes only."""
  abstract = kosmos.abstract_variables(config)["params"]
  leaves = jax.tree_util.tree_flatten_with_path(
      abstract, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
  rows = []
  for path, leaf in leaves:
    names = tuple(leaf.names) if isinstance(leaf, nn.Partitioned) else ()
    value = leaf.value if isinstance(leaf, nn.Partitioned) else leaf
    name = param_layout.path_name(path)
    rows.append((name, tuple(value.shape), names, math.prod(value.shape)))
  return rows


def tower_totals(rows: Iterable[tuple[str, Any, Any, int]]) -> dict[str, int]:
  totals = {tower: 0 for tower in TOWERS}
  for name, _, _, count in rows:
    totals[name.split("/", 1)[0]] += count
  return totals


def format_summary(config: config_lib.KosmosConfig) -> str:
  rows = parameter_rows(config)
  width = max(len(r[0]) for r in rows)
  lines = [f"{'parameter':<{width}}  {'shape':<22} {'logical axes':<44} {'count':>14}"]
  for name, shape, names, count in rows:
    axes = "(" + ", ".join(str(n) for n in names) + ")"
    lines.append(f"{name:<{width}}  {str(shape):<22} {axes:<44} {count:>14,}")
  totals = tower_totals(rows)
  total = sum(totals.values())
  lines.append("")
  for tower, label in TOWERS.items():
    lines.append(f"{label:<16} {totals[tower]:>16,}  ({totals[tower] / 1e9:.3f} B)")
  lines.append(f"total params: {total}")
  return "\n".join(lines)


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
  """["text.num_layers=4", "dtype='bfloat16'"] -> {"text.num_layers": 4, "dtype": "bfloat16"}."""
  overrides = {}
  for item in items:
    key, sep, raw = item.partition("=")
    if not sep:
      raise ValueError(f"--override {item!r} must look like field.name=value")
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw  # bare strings such as bfloat16
    overrides[key.strip()] = value
  return overrides


_MODEL = flags.DEFINE_string("model", "kosmos1", f"preset: {sorted(config_lib.PRESETS)}")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "dotted config override, e.g. text.num_layers=4")


def main(argv):
  del argv
  config = config_lib.get_config(_MODEL.value, parse_overrides(_OVERRIDE.value))
  print(format_summary(config))


if __name__ == "__main__":
  app.run(main)
