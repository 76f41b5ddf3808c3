"""Hugging Face CLIP vision tower -> our `VisionEncoder` params (the Kosmos-1 image encoder init).

Kosmos-1 starts its image encoder from CLIP ViT-L/14. This reads a `CLIPVisionModel`,
`CLIPVisionModelWithProjection` or `CLIPModel` directory (config.json + safetensors) and returns a
`VisionConfig` and the `vision` parameter subtree; `init_vision_from_clip` drops it into a full
Kosmos parameter tree. The text tower and projections of a `CLIPModel` are ignored.

The CLIP tower layout is shared with HF Kosmos-2's `vision_model.model.*`, so the rules built
here serve `hf_kosmos2` too.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kosmos_jax.convert import mapping
from kosmos_jax.convert import safetensors_io
from kosmos_jax.models import param_layout
from kosmos_jax.models.config import KosmosConfig, VisionConfig
from kosmos_jax.models.vision import VisionEncoder

# HF field -> our VisionConfig field (shared by CLIPVisionConfig and Kosmos2VisionConfig).
VISION_FIELDS = {
    "image_size": "image_size", "patch_size": "patch_size", "num_channels": "num_channels",
    "hidden_size": "embed_dim", "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads", "intermediate_size": "mlp_dim",
    "layer_norm_eps": "layer_norm_eps", "attention_dropout": "attention_dropout",
    "hidden_act": "activation",
}
# CLIPVisionConfig defaults (used for fields a config.json leaves out, as HF does).
CLIP_VISION_DEFAULTS = {
    "image_size": 224, "patch_size": 32, "num_channels": 3, "hidden_size": 768,
    "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
    "layer_norm_eps": 1e-5, "attention_dropout": 0.0, "hidden_act": "quick_gelu",
}
SUPPORTED_ACTIVATIONS = ("quick_gelu", "gelu")
# Buffers some checkpoints carry; they are not parameters.
_BUFFER_SUFFIXES = ("embeddings.position_ids",)
# CLIPModel parts that are not the vision tower.
_CLIP_OTHER_PREFIXES = ("text_model.", "text_projection.", "visual_projection.", "logit_scale")


def vision_rules(hf_prefix: str, config: VisionConfig, ours: str = "vision") -> list[mapping.Rule]:
  """Rules for a CLIP-layout vision tower whose state_dict keys start with `hf_prefix`."""
  p = hf_prefix
  rules = [
      mapping.Rule(f"{p}embeddings.class_embedding", f"{ours}/class_embedding"),
      mapping.Rule(f"{p}embeddings.patch_embedding.weight", f"{ours}/patch_embedding/kernel",
                   "conv"),
      mapping.Rule(f"{p}embeddings.position_embedding.weight", f"{ours}/position_embedding"),
  ]
  rules += mapping.layer_norm(f"{p}pre_layrnorm", f"{ours}/pre_layernorm")   # sic: HF "layrnorm"
  for i in range(config.num_layers):
    hf, us = f"{p}encoder.layers.{i}", f"{ours}/layers_{i}"
    rules += mapping.attention(f"{hf}.self_attn", f"{us}/self_attn", config.num_heads)
    rules += mapping.layer_norm(f"{hf}.layer_norm1", f"{us}/layer_norm1")
    rules += mapping.dense(f"{hf}.mlp.fc1", f"{us}/mlp/fc1")
    rules += mapping.dense(f"{hf}.mlp.fc2", f"{us}/mlp/fc2")
    rules += mapping.layer_norm(f"{hf}.layer_norm2", f"{us}/layer_norm2")
  rules += mapping.layer_norm(f"{p}post_layernorm", f"{ours}/post_layernorm")
  return rules


def is_vision_buffer(name: str) -> bool:
  return name.endswith(_BUFFER_SUFFIXES)


def vision_config_from_hf(hf: Mapping[str, Any], defaults: Mapping[str, Any],
                          base: VisionConfig = VisionConfig(), source: str = "config.json"
                          ) -> VisionConfig:
  """A HF vision config dict (missing fields take `defaults`) -> our VisionConfig.

  Fields HF does not have (feature preparation, image mean/std) come from `base`.
  """
  values = {key: hf.get(key, default) for key, default in defaults.items()}
  if values["hidden_act"] not in SUPPORTED_ACTIVATIONS:
    raise ValueError(f"{source}: vision hidden_act={values['hidden_act']!r} is not supported; "
                     f"kosmos-jax implements {SUPPORTED_ACTIVATIONS}.")
  return dataclasses.replace(base, **{VISION_FIELDS[k]: v for k, v in values.items()})


def vision_config_to_hf(config: VisionConfig) -> dict[str, Any]:
  """Our VisionConfig -> the HF fields of `VISION_FIELDS`."""
  return {hf: getattr(config, ours) for hf, ours in VISION_FIELDS.items()}


def image_stats(hf_dir: str, base: VisionConfig) -> VisionConfig:
  """Takes image_mean/image_std from preprocessor_config.json when the directory has one."""
  pre = safetensors_io.read_json(hf_dir, "preprocessor_config.json", required=False)
  updates = {k: tuple(float(x) for x in pre[k]) for k in ("image_mean", "image_std") if k in pre}
  return dataclasses.replace(base, **updates)


def abstract_vision_params(config: VisionConfig, param_dtype: str = "float32"
                           ) -> dict[str, jax.ShapeDtypeStruct]:
  """Flat {path: ShapeDtypeStruct} of an unrolled VisionEncoder's params, under 'vision/'."""
  encoder = VisionEncoder(config, scan_layers=False, param_dtype=jnp.dtype(param_dtype))
  images = jnp.zeros((1, config.image_size, config.image_size, config.num_channels), jnp.uint8)
  shapes = jax.eval_shape(lambda r: encoder.init(r, images), jax.random.key(0))
  return mapping.flatten({"vision": nn.unbox(shapes)["params"]})


def _clip_prefix(state_dict: Mapping[str, np.ndarray]) -> str:
  """'vision_model.' for CLIPModel and older CLIPVisionModel files, '' for transformers>=5 ones."""
  return "vision_model." if any(k.startswith("vision_model.") for k in state_dict) else ""


def load_hf_clip_vision(hf_dir: str, *, base: Optional[VisionConfig] = None,
                        scan_layers: bool = True, param_dtype: str = "float32",
                        allow_pickle: bool = False) -> tuple[dict, VisionConfig]:
  """Reads a HF CLIP (vision) directory -> (vision params subtree, VisionConfig).

  `base` supplies the fields HF does not store (Kosmos feature preparation: post-LN on all tokens,
  L2 normalisation, CLS kept); image mean/std come from preprocessor_config.json if present.
  The params are in the scanned layout (leading layer axis) when `scan_layers`.
  """
  hf = safetensors_io.read_json(hf_dir)
  model_type = hf.get("model_type")
  if model_type == "clip":
    hf = hf.get("vision_config", {})
  elif model_type != "clip_vision_model":
    raise ValueError(f"{hf_dir}/config.json has model_type={model_type!r}; expected a CLIP model "
                     "('clip' or 'clip_vision_model'). For Kosmos-2 use "
                     "kosmos_jax.convert.hf_kosmos2.")
  config = vision_config_from_hf(hf, CLIP_VISION_DEFAULTS, base or VisionConfig(),
                                 f"{hf_dir}/config.json")
  config = image_stats(hf_dir, config)
  state_dict = safetensors_io.read_state_dict(hf_dir, allow_pickle)
  prefix = _clip_prefix(state_dict)
  flat = mapping.import_tensors(
      state_dict, vision_rules(prefix, config), abstract_vision_params(config, param_dtype),
      source=f"CLIP vision weights from {hf_dir}",
      ignore=lambda n: is_vision_buffer(n) or n.startswith(_CLIP_OTHER_PREFIXES),
      hint="Check the vision sizes in config.json against the weights.")
  params = mapping.unflatten(flat)["vision"]
  if scan_layers:
    params = param_layout.stack_layers(params)
  return params, config


def init_vision_from_clip(config: KosmosConfig, params: dict, clip_dir: str,
                          allow_pickle: bool = False) -> tuple[dict, KosmosConfig]:
  """Replaces the image encoder of a Kosmos param tree with CLIP weights (the paper's init).

  The CLIP tower must have the sizes of `config.vision`; the config's feature preparation
  (post-LN, L2 normalisation, CLS) is kept and its image mean/std are taken from the CLIP
  directory when it has a preprocessor_config.json. Returns (params, config) with the new vision.
  """
  vision_params, vision = load_hf_clip_vision(
      clip_dir, base=config.vision, scan_layers=config.scan_layers,
      param_dtype=config.param_dtype, allow_pickle=allow_pickle)
  sizes = ("image_size", "patch_size", "num_channels", "embed_dim", "num_layers", "num_heads",
           "mlp_dim")
  differ = [f"{k}: config {getattr(config.vision, k)} vs CLIP {getattr(vision, k)}"
            for k in sizes if getattr(config.vision, k) != getattr(vision, k)]
  if differ:
    raise ValueError(f"The CLIP tower in {clip_dir} does not fit config.vision "
                     f"({'; '.join(differ)})."
                     " Set the vision sizes of the model config to the CLIP ones.")
  if param_layout.is_scanned(params) != config.scan_layers:
    raise ValueError("params and config disagree on the layer layout (config.scan_layers="
                     f"{config.scan_layers}); pass params created from this config.")
  return dict(params, vision=vision_params), dataclasses.replace(config, vision=vision)
