"""AdamW with the paper's settings, learning-rate schedules, weight-decay and trainability masks.

Paper recipe (docs/training.md §3): AdamW (0.9, 0.98), eps 1e-6, weight decay 0.01, gradient
clipping 2.0, LR warm-up over 375 steps then linear decay to 0, CLIP frozen except its last
layer. Frozen parameters get no optimizer state (optax.multi_transform with set_to_zero); a
scanned layer stack that is only partly trainable (the last CLIP layer) gets an element mask.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kosmos_jax.models import config as config_lib
from kosmos_jax.models import param_layout

SCHEDULES = ("linear", "cosine", "constant", "rsqrt")
# Parameter names (last path element) that get no weight decay: biases, LayerNorm scales, and
# learned embeddings of positions (the token embedding and latent queries do get decay).
NO_DECAY_NAMES = ("bias", "scale", "position_embedding", "class_embedding")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  learning_rate: float = 2e-4
  schedule: str = "linear"
  warmup_steps: int = 375
  # Steps of the decay phase after warm-up; 0 means "until the end of training".
  decay_steps: int = 0
  end_learning_rate: float = 0.0
  b1: float = 0.9
  b2: float = 0.98
  eps: float = 1e-6
  weight_decay: float = 0.01
  grad_clip_norm: float = 2.0          # 0 disables clipping
  # Which part of the image encoder trains: "all", "last_layer" (paper), "none";
  # None takes the model config's `vision_trainable`.
  vision_trainable: Optional[str] = None
  # Extra regexes over "/"-joined parameter paths to freeze, e.g. ("^text/embed_tokens/",).
  frozen_patterns: tuple[str, ...] = ()


def learning_rate_schedule(config: OptimizerConfig, total_steps: int) -> optax.Schedule:
  """LR as a function of the number of updates already applied (0 for the first update).

  Warm-up is linear from lr/warmup at the first update (fairseq's polynomial_decay) to lr.
  """
  if config.schedule not in SCHEDULES:
    raise ValueError(f"Unknown LR schedule {config.schedule!r}; choose one of {SCHEDULES}")
  lr, warmup = config.learning_rate, max(config.warmup_steps, 0)
  decay = config.decay_steps or max(total_steps - warmup, 1)
  if config.schedule == "linear":
    main = optax.linear_schedule(lr, config.end_learning_rate, decay)
  elif config.schedule == "cosine":
    main = optax.cosine_decay_schedule(lr, decay, alpha=config.end_learning_rate / lr if lr else 0)
  elif config.schedule == "constant":
    main = optax.constant_schedule(lr)
  else:  # rsqrt: lr * sqrt(warmup / step) after warm-up
    main = lambda count: lr * jnp.sqrt(max(warmup, 1) / (count + max(warmup, 1)))
  if warmup == 0:
    return main
  schedule = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
  return lambda count: schedule(count + 1)


def _map_with_names(fn: Callable[[str, Any], Any], params: Any) -> Any:
  is_box = lambda x: isinstance(x, nn.Partitioned)
  return jax.tree_util.tree_map_with_path(lambda p, x: fn(param_layout.path_name(p), x), params, is_leaf=is_box)


def decay_mask(params: Any) -> Any:
  """True where weight decay applies."""
  return _map_with_names(lambda name, _: name.rsplit("/", 1)[-1] not in NO_DECAY_NAMES, params)


def _shape(leaf) -> tuple[int, ...]:
  return tuple((leaf.value if isinstance(leaf, nn.Partitioned) else leaf).shape)


def trainability(params: Any, vision_trainable: str, frozen_patterns: Sequence[str] = ()):
  """Returns (labels, element_masks) over the param tree.

  labels: "train" or "frozen" per leaf. element_masks: None per leaf, or a float array that
  broadcasts against the leaf, for scanned stacks of which only some layers train.
  """
  patterns = [re.compile(p) for p in frozen_patterns]

  def label(name: str, leaf) -> tuple[str, Optional[np.ndarray]]:
    if any(p.search(name) for p in patterns):
      return "frozen", None
    if not name.startswith("vision/") or vision_trainable == "all":
      return "train", None
    if vision_trainable == "none":
      return "frozen", None
    parts = name.split("/")
    if parts[1] == "post_layernorm":
      return "train", None
    if parts[1] == "layers":                         # scanned: train only the last slice
      shape = _shape(leaf)
      mask = np.zeros((shape[0],) + (1,) * (len(shape) - 1), np.float32)
      mask[-1] = 1.0
      return "train", mask
    return "frozen", None

  results = _map_with_names(label, params)
  is_pair = lambda x: isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str)
  labels = jax.tree_util.tree_map(lambda r: r[0], results, is_leaf=is_pair)
  masks = jax.tree_util.tree_map(lambda r: r[1], results, is_leaf=is_pair)
  # An unrolled vision stack: only the highest-numbered layer trains.
  if vision_trainable == "last_layer" and isinstance(params, dict) and "vision" in params:
    layer_ids = [int(k.split("_")[1]) for k in params["vision"] if k.startswith("layers_")]
    if layer_ids:
      last = f"layers_{max(layer_ids)}"
      labels["vision"][last] = jax.tree_util.tree_map(
          lambda _: "train", labels["vision"][last])
  return labels, masks


def scale_by_element_mask(masks: Any) -> optax.GradientTransformation:
  """Multiplies each update by its mask (None leaves pass through)."""
  def update(updates, state, params=None):
    del params
    # masks first: its None leaves stand for whole subtrees of `updates` (arrays, or optax's
    # MaskedNode for leaves another transform owns), which pass through unchanged.
    out = jax.tree_util.tree_map(
        lambda m, u: u if m is None else u * jnp.asarray(m, u.dtype), masks, updates,
        is_leaf=lambda x: x is None)
    return out, state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def has_element_masks(masks: Any) -> bool:
  return any(m is not None for m in jax.tree_util.tree_leaves(masks, is_leaf=lambda x: x is None))


def resolve_vision_trainable(config: OptimizerConfig, model_vision_trainable: str) -> str:
  """Which part of the image encoder trains: the optimizer's setting, else the model's."""
  value = config.vision_trainable or model_vision_trainable
  if value not in config_lib.VISION_TRAINABLE:
    raise ValueError(f"vision_trainable={value!r}; choose one of {config_lib.VISION_TRAINABLE}")
  return value


def make_optimizer(config: OptimizerConfig, params: Any, schedule: optax.Schedule,
                   vision_trainable: str) -> optax.GradientTransformation:
  """AdamW chain over (possibly boxed) `params` with `schedule` (`learning_rate_schedule`);
  `vision_trainable` as `resolve_vision_trainable` returns it."""
  labels, masks = trainability(params, vision_trainable, config.frozen_patterns)
  element_mask = [scale_by_element_mask(masks)] if has_element_masks(masks) else []
  adamw = optax.chain(
      *element_mask,
      *([optax.clip_by_global_norm(config.grad_clip_norm)] if config.grad_clip_norm > 0 else []),
      optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps),
      optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
      optax.scale_by_learning_rate(schedule),
      *element_mask)
  return optax.multi_transform({"train": adamw, "frozen": optax.set_to_zero()}, labels)


def trainable_filter(params: Any, config: OptimizerConfig, vision_trainable: str) -> Any:
  """True per leaf that receives gradients (used to stop gradients into frozen towers)."""
  labels, _ = trainability(params, vision_trainable, config.frozen_patterns)
  return jax.tree_util.tree_map(lambda l: l == "train", labels)
