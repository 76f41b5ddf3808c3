"""The kosmos-jax weights-only checkpoint: model parameters plus the config that built them.

Layout of a checkpoint directory (what training, evaluation and serving restore from, and what
`python -m kosmos_jax.convert.hf_kosmos2` writes):

  <directory>/model_config.json   `config.to_dict(config)`: every model field, incl. scan_layers
  <directory>/params/             the parameter tree, saved by Orbax `StandardCheckpointer`
  <directory>/hf_assets/          optional: tokenizer/processor files copied from a HF directory

The params are the plain (unboxed) Flax tree, `{'connector': ..., 'text': ..., 'vision': ...}`,
in the layer layout named by `config.scan_layers` (scanned: `<tower>/layers/...` with a leading
layer axis; unrolled: `<tower>/layers_N/...`). Nothing else is stored: no optimizer state and no
step, so the same directory serves fine-tuning (as an init) and inference.

Restoring:
  * `load_params(d)` restores onto the default device in the saved layout.
  * `load_params(d, scan_layers=False)` also converts the layout (stack/unstack on the host).
  * `load_params(d, target)` restores straight into the shardings of `target`, a tree of
    `jax.ShapeDtypeStruct` (with `.sharding`) or arrays, so a large model never lands on one
    device; leaf dtypes of `target` win (e.g. restore float32 weights as bfloat16). A target in the
    other layer layout is an error (converting would need an unsharded copy): build the target
    from a config with the saved `scan_layers`, or re-convert.
Every mismatch (layout, missing or unexpected parameters, shapes) is reported by path before
Orbax is called.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from kosmos_jax import paths
from kosmos_jax.models import config as config_lib
from kosmos_jax.models import kosmos
from kosmos_jax.models import param_layout

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"
ASSETS_DIR = "hf_assets"
_MAX_LISTED = 20


def _listing(items) -> str:
  items = sorted(items)
  more = f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
  return ", ".join(items[:_MAX_LISTED]) + more


def abstract_params(config: config_lib.KosmosConfig) -> dict:
  """Shapes and dtypes of the params of `config` (no allocation)."""
  return nn.unbox(kosmos.abstract_variables(config))["params"]


def _layout_hint(config: config_lib.KosmosConfig) -> str:
  return "scanned (scan_layers=True)" if config.scan_layers else "unrolled (scan_layers=False)"


def check_params(params: Any, expected: Any, what: str, check_dtype: bool = True) -> None:
  """Raises ValueError if `params` does not have the paths/shapes(/dtypes) of `expected`."""
  got, want = param_layout.flat_paths(params), param_layout.flat_paths(expected)
  got_layout = param_layout.layer_layout(params)
  want_layout = param_layout.layer_layout(expected)
  if got_layout and want_layout and got_layout != want_layout:
    raise ValueError(f"{what}: the params are in the {got_layout} layer layout but the config "
                     f"expects {want_layout}. Convert with "
                     "kosmos_jax.models.param_layout.stack_layers/unstack_layers, or set "
                     "config.scan_layers to match.")
  problems = []
  if set(want) - set(got):
    problems.append(f"missing parameters: {_listing(set(want) - set(got))}")
  if set(got) - set(want):
    problems.append(f"unexpected parameters: {_listing(set(got) - set(want))}")
  shapes = [f"{p} {tuple(got[p].shape)} != {tuple(want[p].shape)}"
            for p in sorted(set(got) & set(want)) if tuple(got[p].shape) != tuple(want[p].shape)]
  if shapes:
    problems.append(f"wrong shapes (got != expected): {_listing(shapes)}")
  if check_dtype:
    dtypes = [f"{p} {got[p].dtype} != {want[p].dtype}" for p in sorted(set(got) & set(want))
              if np.dtype(got[p].dtype) != np.dtype(want[p].dtype)]
    if dtypes:
      problems.append(f"wrong dtypes (got != expected; cast the params or set "
                      f"config.param_dtype): {_listing(dtypes)}")
  if problems:
    raise ValueError(f"{what}: " + "; ".join(problems))


def save_params(directory: str, params: Any, config: config_lib.KosmosConfig,
                overwrite: bool = False) -> str:
  """Writes `params` (+ `config`) as a weights-only checkpoint; returns the params path.

  The params must match `config` exactly (layout, paths, shapes, dtype = config.param_dtype);
  boxed (logically partitioned) trees are unboxed first. Refuses an existing checkpoint unless
  `overwrite`. Blocks until the write has finished.
  """
  config.validate()
  params = nn.unbox(params)
  check_params(params, abstract_params(config), f"save_params({directory!r})")
  directory = os.path.abspath(directory)
  params_path = os.path.join(directory, PARAMS_DIR)
  if os.path.exists(params_path) and not overwrite:
    raise FileExistsError(f"{params_path} already exists; pass overwrite=True (--overwrite) or "
                          "choose an empty output directory.")
  os.makedirs(directory, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(params_path, params, force=overwrite)
  checkpointer.wait_until_finished()
  paths.write_text_whole(os.path.join(directory, CONFIG_FILE),
                         json.dumps(config_lib.to_dict(config), indent=2, sort_keys=True))
  return params_path


def load_config(directory: str) -> config_lib.KosmosConfig:
  """The `KosmosConfig` stored with a checkpoint."""
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.exists(path):
    hint = (" It looks like a Hugging Face directory: convert it with "
            "`python -m kosmos_jax.convert.hf_kosmos2 --hf_dir=... --output_dir=...`."
            if os.path.exists(os.path.join(directory, "config.json")) else "")
    raise FileNotFoundError(f"{path} is missing: {directory!r} is not a kosmos-jax params "
                            f"checkpoint (written by params_io.save_params).{hint}")
  with open(path) as f:
    return config_lib.from_dict(json.load(f))


def _saved_tree(params_path: str) -> Any:
  """The saved parameter tree as {path: metadata with .shape/.dtype} (no data read)."""
  metadata = ocp.StandardCheckpointer().metadata(params_path)
  tree = getattr(metadata, "item_metadata", metadata)
  return getattr(tree, "tree", tree)


def load_params(directory: str, target: Any = None, scan_layers: Optional[bool] = None
                ) -> tuple[Any, config_lib.KosmosConfig]:
  """Restores a checkpoint written by `save_params`; returns (params, config).

  Args:
    directory: the checkpoint directory.
    target: optional tree of `jax.ShapeDtypeStruct` (with shardings) or arrays, e.g.
      `jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
      abstract_params(config), shardings)`; the params are restored into those shardings and
      dtypes. It must be in the saved layer layout.
    scan_layers: without `target`, converts to this layer layout if it differs from the saved
      one (the returned config says the new layout).
  """
  config = load_config(directory)
  params_path = os.path.join(os.path.abspath(directory), PARAMS_DIR)
  if not os.path.isdir(params_path):
    raise FileNotFoundError(f"{params_path} is missing; the checkpoint is incomplete.")
  saved = _saved_tree(params_path)
  expected = abstract_params(config)
  check_params(saved, expected, f"{params_path} against its {CONFIG_FILE}", check_dtype=False)
  if target is not None:
    if scan_layers is not None and scan_layers != config.scan_layers:
      raise ValueError("load_params: pass either `target` or `scan_layers`, not a layout change "
                       "together with a target.")
    check_params(target, saved, f"load_params({directory!r}): the target (the checkpoint is "
                 f"{_layout_hint(config)})", check_dtype=False)
  else:
    target = expected
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def as_struct(x):
    sharding = getattr(x, "sharding", None) or device
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  target = jax.tree_util.tree_map(as_struct, target)
  params = ocp.StandardCheckpointer().restore(params_path, target)
  if scan_layers is not None and scan_layers != config.scan_layers:
    convert = param_layout.stack_layers if scan_layers else param_layout.unstack_layers
    params = convert(params)
    config = dataclasses.replace(config, scan_layers=scan_layers)
  return params, config
