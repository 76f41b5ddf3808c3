"""The Kosmos multimodal LM: encode images, resample to latent tokens, splice them into the token
embeddings at the placeholder positions, decode, return logits.

Batch layout (all [batch, length] unless noted):
  tokens               input token ids
  images               [batch, num_images, H, W, 3] uint8 (normalised here) or float (normalised)
  image_token_mask     1 at placeholder positions; the k-th run of a row takes image k of the row
  segment_ids          0 = padding; packed examples have distinct ids (default: all ones)
  positions            per-token positions (default: restart at each segment)
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kosmos_jax.models.config import KosmosConfig
from kosmos_jax.models.decoder import TextDecoder
from kosmos_jax.models.resampler import Resampler
from kosmos_jax.models.vision import VisionEncoder

Array = jnp.ndarray


class Kosmos(nn.Module):
  config: KosmosConfig

  def setup(self):
    c = self.config
    kw = dict(dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype))
    self.vision = VisionEncoder(c.vision, scan_layers=c.scan_layers, scan_unroll=c.scan_unroll,
                                remat_policy=c.remat_policy, **kw)
    self.connector = Resampler(c.connector, embed_dim=c.text.embed_dim,
                               num_heads=c.text.num_heads, layer_norm_eps=c.text.layer_norm_eps,
                               **kw)
    self.text = TextDecoder(c.text, scan_layers=c.scan_layers, scan_unroll=c.scan_unroll,
                            remat_policy=c.remat_policy, **kw)

  def encode_images(self, images: Array, deterministic: bool = True) -> Array:
    """[batch, num_images, H, W, 3] -> image embeddings [batch, num_images, latents, embed]."""
    batch, num_images = images.shape[:2]
    flat = images.reshape((batch * num_images,) + images.shape[2:])
    features = self.vision(flat, deterministic=deterministic)     # [b*n, tokens, vision_embed]
    latents = self.connector(features, deterministic=deterministic)  # [b*n, latents, embed]
    return latents.reshape((batch, num_images) + latents.shape[1:])

  def __call__(self, tokens: Array, images: Optional[Array] = None,
               image_token_mask: Optional[Array] = None, segment_ids: Optional[Array] = None,
               positions: Optional[Array] = None, *, deterministic: bool = True,
               decode: bool = False, image_embeds: Optional[Array] = None,
               last_logits_only: bool = False, output: str = "logits"):
    """Returns float32 logits [batch, length, vocab] ([batch, 1, vocab] with last_logits_only);
    output="hidden": (hidden [batch, length, embed], output table [vocab, embed]), see
    `TextDecoder`."""
    if image_embeds is None and images is not None:
      image_embeds = self.encode_images(images, deterministic=deterministic)
    return self.text(tokens, image_embeds=image_embeds, image_token_mask=image_token_mask,
                     segment_ids=segment_ids, positions=positions, deterministic=deterministic,
                     decode=decode, last_logits_only=last_logits_only, output=output)


def dummy_inputs(config: KosmosConfig, batch: int = 1, length: int = 0,
                 num_images: int = 1) -> dict[str, np.ndarray]:
  """Smallest inputs that create every parameter (one image, one placeholder run)."""
  length = length or config.num_image_tokens + 2
  v = config.vision
  mask = np.zeros((batch, length), np.int32)
  mask[:, 1:1 + config.num_image_tokens] = 1
  return dict(tokens=np.zeros((batch, length), np.int32),
              images=np.zeros((batch, num_images, v.image_size, v.image_size, v.num_channels),
                              np.uint8),
              image_token_mask=mask)


def init_variables(config: KosmosConfig, rng: jax.Array) -> dict:
  """Initialised (boxed, logically partitioned) variables: {'params': ...}."""
  inputs = dummy_inputs(config)
  return Kosmos(config).init({"params": rng}, **inputs)


def abstract_variables(config: KosmosConfig) -> dict:
  """Shapes/dtypes/logical axes of every variable without allocating (works for 1.6B on a laptop)."""
  return jax.eval_shape(lambda r: init_variables(config, r), jax.random.key(0))


def init_params(config: KosmosConfig, rng: jax.Array) -> dict:
  """Plain (unboxed) parameter tree."""
  return nn.unbox(init_variables(config, rng))["params"]


def init_cache(model: nn.Module, batch: int, max_len: int) -> dict:
  """A zero KV cache (the 'cache' collection of `model`, e.g. `Kosmos(config)`) for `batch` rows
  of up to `max_len` tokens; shapes come from `jax.eval_shape`, nothing else is allocated."""
  tokens = jnp.zeros((batch, max_len), jnp.int32)
  shapes = jax.eval_shape(
      lambda: model.init({"params": jax.random.key(0)}, tokens, decode=True)["cache"])
  return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), nn.unbox(shapes))
