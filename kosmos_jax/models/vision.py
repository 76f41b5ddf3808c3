"""CLIP ViT image encoder (ViT-L/14 at 224 px in Kosmos-1).

Class token + learned positions, `pre_layernorm`, pre-LN blocks with QuickGELU, then the Kosmos
feature preparation: `post_layernorm` on all tokens and per-token L2 normalisation
(docs/model.md §5).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from kosmos_jax.models import layers
from kosmos_jax.models.config import VisionConfig

Array = jnp.ndarray
VISION_AXES = layers.AttentionAxes(embed="vision_embed", heads="vision_heads", kv="kv")


def normalize_images(images: Array, mean, std) -> Array:
  """uint8 [..., H, W, 3] -> float32 CLIP-normalised; float input is taken as already normalised."""
  if images.dtype == jnp.uint8:
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  return images.astype(jnp.float32)


class VisionLayer(nn.Module):
  """CLIP encoder block: x += attn(layer_norm1(x)); x += mlp(layer_norm2(x))."""
  config: VisionConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  deterministic: bool = True
  emit_hidden: bool = False

  @nn.compact
  def __call__(self, x: Array):
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = layers.LayerNorm("vision_embed", c.layer_norm_eps, name="layer_norm1", **kw)(x)
    h = layers.Attention(num_heads=c.num_heads, head_dim=c.head_dim, out_features=c.embed_dim,
                         axes=VISION_AXES, dropout_rate=c.attention_dropout, init_kind="normal",
                         name="self_attn", **kw)(h, h, deterministic=self.deterministic)
    x = x + h
    h = layers.LayerNorm("vision_embed", c.layer_norm_eps, name="layer_norm2", **kw)(x)
    h = layers.Mlp(hidden=c.mlp_dim, out_features=c.embed_dim, activation=c.activation,
                   embed_axis="vision_embed", mlp_axis="vision_mlp", init_kind="normal", name="mlp",
                   **kw)(h)
    x = nn.with_logical_constraint(x + h, ("batch", "vision_tokens", "vision_embed"))
    return x, (x if self.emit_hidden else None)


class VisionEncoder(nn.Module):
  """images [num, H, W, 3] -> image features [num, tokens, vision_embed] for the connector."""
  config: VisionConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  scan_layers: bool = True
  scan_unroll: int = 0
  remat_policy: str = "none"

  @nn.compact
  def __call__(self, images: Array, deterministic: bool = True) -> Array:
    c = self.config
    if images.shape[-3:] != (c.image_size, c.image_size, c.num_channels):
      raise ValueError(f"images have shape {images.shape}; the vision encoder expects "
                       f"[..., {c.image_size}, {c.image_size}, {c.num_channels}] (NHWC)")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    normal = nn.initializers.normal(0.02)
    # OpenAI CLIP draws the class and position embeddings from N(0, width^-0.5): at 0.02 the
    # position signal starts ~10x below the patch features and positions are learned slowly.
    embedding = nn.initializers.normal(c.embed_dim ** -0.5)
    x = normalize_images(images, c.image_mean, c.image_std).astype(self.dtype)
    x = nn.Conv(c.embed_dim, (c.patch_size, c.patch_size), strides=(c.patch_size, c.patch_size),
                padding="VALID", use_bias=False,
                kernel_init=nn.with_logical_partitioning(normal, (None, None, None, "vision_embed")),
                name="patch_embedding", **kw)(x)                     # [num, h, w, vision_embed]
    num = x.shape[0]
    x = x.reshape(num, -1, c.embed_dim)                              # [num, patches, vision_embed]
    cls = self.param("class_embedding", nn.with_logical_partitioning(embedding, ("vision_embed",)),
                     (c.embed_dim,), self.param_dtype)
    pos = self.param("position_embedding",
                     nn.with_logical_partitioning(embedding, ("vision_tokens", "vision_embed")),
                     (c.num_positions, c.embed_dim), self.param_dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (num, 1, c.embed_dim)), x], 1)
    x = x + pos.astype(self.dtype)[None]                             # [num, tokens, vision_embed]
    x = layers.LayerNorm("vision_embed", c.layer_norm_eps, name="pre_layernorm", **kw)(x)

    last = c.feature_layer in (-1, c.num_layers - 1)
    layer_kwargs = dict(config=c, deterministic=deterministic, emit_hidden=not last, **kw)
    x, hidden = layers.apply_layer_stack(VisionLayer, layer_kwargs, c.num_layers, x,
                                         scan=self.scan_layers, remat=self.remat_policy,
                                    unroll=self.scan_unroll)
    if not last:
      x = hidden[c.feature_layer]
    post_ln = layers.LayerNorm("vision_embed", c.layer_norm_eps, name="post_layernorm", **kw)
    if c.post_ln_all_tokens:
      x = post_ln(x)
    else:
      x = x.at[:, 0].set(post_ln(x[:, 0]))                           # CLIP: only the pooled token
    if not c.keep_cls:
      x = x[:, 1:]
    if c.l2_normalize:
      x32 = x.astype(jnp.float32)
      norm = jnp.sqrt(jnp.sum(jnp.square(x32), axis=-1, keepdims=True))
      x = (x32 / jnp.maximum(norm, 1e-12)).astype(self.dtype)
    return x
