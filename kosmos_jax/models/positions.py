"""Position encodings: xPos (relative, on queries/keys) and fairseq sinusoidal (absolute).

xPos follows torchscale's `XPOS` exactly (docs/model.md §4): interleaved (GPT-J style) rotary
pairs, per-pair decay base zeta_j = (2j + gamma*D) / ((1+gamma)*D), scale base B, keys downscaled.
torchscale centres the decay exponent on ceil(T/2) for a key length T; the centre cancels in
q.k, and we take it as an argument so that a KV cache of fixed length can keep rotated keys.
"""
from __future__ import annotations

import math

import jax.numpy as jnp


def xpos_decay_base(head_dim: int, gamma: float = 0.4) -> jnp.ndarray:
  """zeta_j = (2j + gamma*D) / ((1+gamma)*D), j = 0..D/2-1.  # [D/2]"""
  j = jnp.arange(head_dim // 2, dtype=jnp.float32)
  return (2.0 * j + gamma * head_dim) / ((1.0 + gamma) * head_dim)


def xpos_center(key_length: int) -> int:
  """torchscale's centre for a key length T: positions run from floor(-T/2), i.e. centre ceil(T/2)."""
  return -((-key_length) // 2)


def apply_xpos(x: jnp.ndarray, positions: jnp.ndarray, *, center: int, scale_base: int,
               gamma: float = 0.4, downscale: bool = False) -> jnp.ndarray:
  """Rotates and scales queries (downscale=False) or keys (downscale=True).

  Args:
    x: [batch, length, heads, head_dim] queries or keys.
    positions: [batch, length] integer positions (the rotation angle is position * theta_j).
    center: the decay exponent is (position - center) / scale_base.
    scale_base: xPos scale base B (512 in the paper).
    gamma: xPos gamma (0.4).
    downscale: keys use the inverse scale, so q.k decays as zeta^((n - m) / B).
  Returns:
    x rotated, in float32.  # [batch, length, heads, head_dim]
  """
  head_dim = x.shape[-1]
  half = head_dim // 2
  positions = positions.astype(jnp.float32)
  inv_freq = 1.0 / (10000.0 ** (jnp.arange(half, dtype=jnp.float32) / half))  # [D/2]
  angle = positions[..., None] * inv_freq                                          # [B, L, D/2]
  exponent = (positions - center)[..., None] / scale_base
  scale = xpos_decay_base(head_dim, gamma) ** exponent                             # [B, L, D/2]
  if downscale:
    scale = 1.0 / scale
  cos = (jnp.cos(angle) * scale)[:, :, None, :]                                    # [B, L, 1, D/2]
  sin = (jnp.sin(angle) * scale)[:, :, None, :]
  x = x.astype(jnp.float32)
  x_even, x_odd = x[..., 0::2], x[..., 1::2]
  out_even = x_even * cos - x_odd * sin
  out_odd = x_odd * cos + x_even * sin
  return jnp.stack([out_even, out_odd], axis=-1).reshape(x.shape)


def fairseq_sinusoidal(positions: jnp.ndarray, dim: int, is_pad: jnp.ndarray | None = None,
                       padding_idx: int = 1) -> jnp.ndarray:
  """fairseq / HF-Kosmos-2 sinusoidal embeddings for 0-based token positions.

  The table index is position + padding_idx + 1 (the first real token gets index 2); rows are
  [sin(p*w_0..w_{h-1}) | cos(p*w_0..w_{h-1})] with w_i = exp(-i*ln(10000)/(h-1)); pads get zeros.
  Args:
    positions: [batch, length] 0-based positions of real tokens.
    dim: embedding width.
    is_pad: optional [batch, length] bool; those rows are zero (fairseq's padding row).
  Returns:
    [batch, length, dim] float32.
  """
  half = dim // 2
  step = math.log(10000.0) / (half - 1)
  freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -step)                    # [h]
  index = (positions + padding_idx + 1).astype(jnp.float32)
  angle = index[..., None] * freqs                                                 # [B, L, h]
  emb = jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, [(0, 0), (0, 0), (0, 1)])
  if is_pad is not None:
    emb = jnp.where(is_pad[..., None], 0.0, emb)
  return emb
