"""MAGNETO (Sub-LN) causal decoder: token embedding, image splicing, the layer stack, tied logits.

Block (docs/model.md §2):
  x += Dropout(out_proj(inner_attn_ln(Attn(self_attn_layer_norm(x)))))
  x += Dropout(fc2(ffn_layernorm(GeLU(fc1(final_layer_norm(x))))))
then a final `layer_norm` and logits against the (tied) token embedding.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from kosmos_jax.models import layers
from kosmos_jax.models import positions as positions_lib
from kosmos_jax.models.config import TextConfig

Array = jnp.ndarray
# What TextDecoder returns: full logits, or the output layer's input and weights.
OUTPUTS = ("logits", "hidden")


def segment_positions(segment_ids: Array) -> Array:
  """0-based position of each token within its segment (runs of equal ids).  # [batch, length]"""
  length = segment_ids.shape[-1]
  index = jnp.arange(length, dtype=jnp.int32)
  starts = jnp.concatenate(
      [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
  start_index = jax.lax.cummax(jnp.where(starts, index, 0), axis=1)
  return index - start_index


def padded_positions(segment_ids: Array) -> Array:
  """Positions that skip padding (segment 0): the first real token of a row gets 0.

  For left-padded prompts this gives the same positions as the unpadded prompt, which is what HF's
  padding-aware position ids and xPos relative offsets both need.
  """
  real = (segment_ids != 0).astype(jnp.int32)
  return jnp.maximum(jnp.cumsum(real, axis=1) - 1, 0)


def splice_image_embeddings(token_embeds: Array, image_embeds: Array,
                            image_token_mask: Array) -> Array:
  """Overwrites placeholder positions with image embeddings, in order.

  The k-th run of placeholders in a row receives image k of that row: placeholder j of the row
  (counting from 0 across all runs) takes row-flattened image token j.
  Args:
    token_embeds: [batch, length, embed]
    image_embeds: [batch, num_images, tokens_per_image, embed]
    image_token_mask: [batch, length] bool/int, 1 at placeholder positions.
  """
  batch, num_images, per_image, dim = image_embeds.shape
  flat = image_embeds.reshape(batch, num_images * per_image, dim)
  mask = image_token_mask.astype(bool)
  slot = jnp.clip(jnp.cumsum(mask, axis=1) - 1, 0, num_images * per_image - 1)  # [batch, length]
  gathered = jnp.take_along_axis(flat, slot[..., None], axis=1)                  # [batch, length, embed]
  return jnp.where(mask[..., None], gathered.astype(token_embeds.dtype), token_embeds)


class DecoderLayer(nn.Module):
  """One pre-LN + Sub-LN block."""
  config: TextConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  deterministic: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, x: Array, mask: Optional[Array], positions: Array, key_valid: Array):
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = layers.LayerNorm("embed", c.layer_norm_eps, name="self_attn_layer_norm", **kw)(x)
    h = layers.Attention(
        num_heads=c.num_heads, head_dim=c.head_dim, out_features=c.embed_dim,
        dropout_rate=c.attention_dropout, inner_ln=c.subln, layer_norm_eps=c.layer_norm_eps,
        softmax_fp32=c.attn_softmax_fp32, xpos=c.xpos, xpos_scale_base=c.xpos_scale_base,
        xpos_gamma=c.xpos_gamma, init_kind="torch", vo_gain=c.init_gamma, causal=True,
        name="self_attn", **kw)(
            h, h, mask=mask, positions=positions, key_valid=key_valid,
            deterministic=self.deterministic, decode=self.decode)
    x = x + nn.Dropout(c.dropout)(h, deterministic=self.deterministic)
    h = layers.LayerNorm("embed", c.layer_norm_eps, name="final_layer_norm", **kw)(x)
    h = layers.Mlp(hidden=c.ffn_dim, out_features=c.embed_dim, activation="gelu",
                   activation_dropout=c.activation_dropout, inner_ln=c.subln,
                   layer_norm_eps=c.layer_norm_eps, init_kind="torch", gain=c.init_gamma,
                   name="ffn", **kw)(h, deterministic=self.deterministic)
    x = x + nn.Dropout(c.dropout)(h, deterministic=self.deterministic)
    return nn.with_logical_constraint(x, ("batch", "length", "embed")), None


class TextDecoder(nn.Module):
  """Embeds tokens (splicing in image embeddings), runs the stack, returns float32 logits."""
  config: TextConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  scan_layers: bool = True
  scan_unroll: int = 0
  remat_policy: str = "none"

  @nn.compact
  def __call__(self, tokens: Array, *, image_embeds: Optional[Array] = None,
               image_token_mask: Optional[Array] = None, segment_ids: Optional[Array] = None,
               positions: Optional[Array] = None, deterministic: bool = True,
               decode: bool = False, last_logits_only: bool = False,
               output: str = "logits") -> Array | tuple[Array, Array]:
    """tokens/segment_ids/positions/image_token_mask: [batch, length]; returns [batch, length, vocab]
    ([batch, 1, vocab] with last_logits_only: a decoding prefill needs only the last column's).

    output="hidden" returns (hidden [batch, length, embed], table [vocab, embed]) instead, the
    output layer's input and weights with logits = hidden @ table^T, for a loss that computes
    the logits a slice at a time (`losses.output_layer_statistics`).

    segment_ids: 0 marks padding; distinct ids are packed examples that do not attend to each
    other. Defaults to all ones. positions default to per-segment positions.
    """
    c = self.config
    if segment_ids is None:
      segment_ids = jnp.ones(tokens.shape, jnp.int32)
    if positions is None:
      positions = segment_positions(segment_ids)
    embed = layers.Embed(c.vocab_size, c.embed_dim, pad_id=c.pad_id, dtype=self.dtype,
                         param_dtype=self.param_dtype, name="embed_tokens")
    x = embed(tokens)                                                    # [batch, length, embed]
    if image_embeds is not None:
      if image_token_mask is None:
        raise ValueError("image_embeds given without image_token_mask")
      x = splice_image_embeddings(x, image_embeds, image_token_mask)
    if c.scale_embedding:
      x = x * math.sqrt(c.embed_dim)
    is_pad = segment_ids == 0
    if c.abs_pos == "sinusoidal_fairseq":
      x = x + positions_lib.fairseq_sinusoidal(positions, c.embed_dim, is_pad,
                                               c.pad_id).astype(x.dtype)
    x = nn.Dropout(c.dropout)(x, deterministic=deterministic)
    if c.embed_dropout_twice:
      x = nn.Dropout(c.dropout)(x, deterministic=deterministic)
    x = nn.with_logical_constraint(x.astype(self.dtype), ("batch", "length", "embed"))

    mask = None if decode else layers.make_causal_mask(segment_ids)
    layer_kwargs = dict(config=c, dtype=self.dtype, param_dtype=self.param_dtype,
                        deterministic=deterministic, decode=decode)
    x, _ = layers.apply_layer_stack(DecoderLayer, layer_kwargs, c.num_layers, x, mask, positions,
                                    ~is_pad, scan=self.scan_layers, remat=self.remat_policy,
                                    unroll=self.scan_unroll)
    if last_logits_only:
      x = x[:, -1:]
    x = layers.LayerNorm("embed", c.layer_norm_eps, self.dtype, self.param_dtype,
                         name="layer_norm")(x)
    if output not in OUTPUTS:
      raise ValueError(f"output={output!r}; choose one of {OUTPUTS}")
    if c.tie_word_embeddings:
      if output == "hidden":
        return x, embed.embedding.astype(self.dtype)
      logits = embed.attend(x)
    else:
      lm_head = layers.Dense((c.vocab_size,), ("embed", "vocab"), use_bias=False,
                             init_kind="normal", dtype=self.dtype, param_dtype=self.param_dtype,
                             name="lm_head")
      if output == "hidden":
        return x, lm_head.weights((c.embed_dim,))[0].T
      logits = lm_head(x)
    logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
    return logits.astype(jnp.float32)
