"""Connector from image features to text-width image embeddings via learned latent queries.

"xattn_single" is the released Kosmos-2 / HF `Kosmos2ImageToTextProjection`: a dense map to the
text width, then one attention of the latents over [image tokens; latents], no LN/FFN/residual.
"perceiver" is a Flamingo-style Perceiver Resampler (LN, attention over [image; latents] with a
residual, FFN with a residual, per layer; final LN) for experiments with a deeper connector.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from kosmos_jax.models import layers
from kosmos_jax.models.config import ConnectorConfig

Array = jnp.ndarray


class Resampler(nn.Module):
  """image features [num, tokens, vision_embed] -> image embeddings [num, latents, embed]."""
  config: ConnectorConfig
  embed_dim: int
  num_heads: int
  layer_norm_eps: float = 1e-5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: Array, deterministic: bool = True) -> Array:
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    heads = c.num_heads or self.num_heads
    h = layers.Dense((self.embed_dim,), ("vision_embed", "embed"), name="dense", **kw)(features)
    latents = self.param(
        "latent_query",
        nn.with_logical_partitioning(nn.initializers.normal(1.0), ("image_tokens", "embed")),
        (c.num_latents, self.embed_dim), self.param_dtype)
    lat = jnp.broadcast_to(latents.astype(self.dtype), (h.shape[0],) + latents.shape)
    attention = lambda name: layers.Attention(
        num_heads=heads, head_dim=self.embed_dim // heads, out_features=self.embed_dim,
        dropout_rate=c.attention_dropout, name=name, **kw)

    if c.kind == "xattn_single":
      kv = jnp.concatenate([h, lat], axis=1) if c.kv_include_latents else h
      out = attention("x_attn")(lat, kv, deterministic=deterministic)
    else:
      eps = self.layer_norm_eps
      media = layers.LayerNorm("embed", eps, name="media_norm", **kw)(h)
      for i in range(c.num_layers):
        q_in = layers.LayerNorm("embed", eps, name=f"latent_norm_{i}", **kw)(lat)
        kv = jnp.concatenate([media, q_in], axis=1) if c.kv_include_latents else media
        lat = lat + attention(f"x_attn_{i}")(q_in, kv, deterministic=deterministic)
        ffn_in = layers.LayerNorm("embed", eps, name=f"ffn_norm_{i}", **kw)(lat)
        lat = lat + layers.Mlp(hidden=c.ffn_mult * self.embed_dim, out_features=self.embed_dim,
                               name=f"ffn_{i}", **kw)(ffn_in, deterministic=deterministic)
      out = layers.LayerNorm("embed", eps, name="final_norm", **kw)(lat)
    return nn.with_logical_constraint(out, ("batch", "image_tokens", "embed"))
