"""Building blocks with logical axis names: Dense, LayerNorm, Embed, attention (+KV cache), MLP,
and the scan/remat layer stack shared by the decoder and the vision tower.

Every parameter is created through `nn.with_logical_partitioning`, so partitioning needs no change
here: `partitioning.py` maps the logical names to mesh axes.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from kosmos_jax.models import positions as positions_lib

Array = jnp.ndarray
NEG_INF = -1e30  # finite, so a fully-masked (padding) query row gives a uniform softmax, not NaN


def linear_init(kind: str, fan_in: int, gain: float = 1.0, std: float = 0.02) -> Callable:
  """Initialiser for a kernel or bias.

  "torch": PyTorch's nn.Linear default U(+-1/sqrt(fan_in)) (what torchscale keeps), times `gain`.
  "normal": N(0, std) times `gain` (CLIP/ViT style).
  "zeros": zeros.
  """
  if kind == "torch":
    bound = gain / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)
  if kind == "normal":
    return lambda key, shape, dtype=jnp.float32: gain * std * jax.random.normal(key, shape, dtype)
  if kind == "zeros":
    return nn.initializers.zeros
  raise ValueError(f"unknown init kind {kind!r}")


def _bf16_on_cpu(*operands: Array) -> bool:
  return all(o.dtype == jnp.bfloat16 for o in operands) and jax.default_backend() == "cpu"


def dot_general(x: Array, y: Array, dimension_numbers) -> Array:
  """`jax.lax.dot_general` in the operands' dtype; on CPU, bfloat16 products accumulate in float32.

  XLA:CPU runs a bf16 x bf16 GEMM natively (YNNPACK; ~2x its float32 rate on CPUs with
  AVX512-BF16) only when the product is float32: a bf16 result makes it convert both operands
  to float32 first. TPUs and GPUs accumulate in float32 either way and are left as they are.
  """
  if not _bf16_on_cpu(x, y):
    return jax.lax.dot_general(x, y, dimension_numbers)
  return jax.lax.dot_general(x, y, dimension_numbers,
                             preferred_element_type=jnp.float32).astype(jnp.bfloat16)


def einsum(spec: str, x: Array, y: Array) -> Array:
  """`jnp.einsum` of two operands, bf16 on CPU accumulated in float32 as in `dot_general`."""
  if not _bf16_on_cpu(x, y):
    return jnp.einsum(spec, x, y)
  return jnp.einsum(spec, x, y, preferred_element_type=jnp.float32).astype(jnp.bfloat16)


def matmul(x: Array, y: Array) -> Array:
  """x [m, k] @ y [k, n] through `dot_general`."""
  return dot_general(x, y, (((1,), (0,)), ((), ())))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def project(x: Array, kernel: Array, in_dims: int) -> Array:
  """Contracts x's last `in_dims` dims with kernel's first: [..., in...] -> [..., out...].

  Same values as autodiff; the custom backward computes the kernel gradient on 2-D views,
  [tokens, in]^T @ [tokens, out]. Autodiff's form
  contracts the [batch, length] dims of 3-D arrays, for which XLA:CPU writes a transposed copy
  with the elementwise producers (activation, LayerNorm, the residual stream's gradient chain
  through every layer above) fused in and recomputed, once per layer: a fifth of the benchmark
  step (docs/performance.md).
  """
  return _project(x, kernel, in_dims)


def _project(x, kernel, in_dims):
  contract_x = tuple(range(x.ndim - in_dims, x.ndim))
  return dot_general(x, kernel, ((contract_x, tuple(range(in_dims))), ((), ())))


def _project_fwd(x, kernel, in_dims):
  return _project(x, kernel, in_dims), (x, kernel)


def _project_bwd(in_dims, residuals, g):
  x, kernel = residuals
  out_dims = kernel.ndim - in_dims
  batch_dims = x.ndim - in_dims
  grad_x = dot_general(
      g, kernel, ((tuple(range(g.ndim - out_dims, g.ndim)), tuple(range(in_dims, kernel.ndim))),
                  ((), ())))
  # [tokens, in]^T @ [tokens, out] on 2-D views (see docstring). Transposing g instead where it
  # is narrower (with a barrier before the result's transpose) was ~3% faster on one core but
  # changed the reduction order across process layouts (bitwise resume on 2 x 4 vs 1 x 8 devices).
  x_2d = x.reshape(-1, math.prod(x.shape[batch_dims:]))
  g_2d = g.reshape(-1, math.prod(g.shape[batch_dims:]))
  grad_kernel = matmul(x_2d.T, g_2d).reshape(kernel.shape)
  return grad_x.astype(x.dtype), grad_kernel.astype(kernel.dtype)


project.defvjp(_project_fwd, _project_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def project_fanout(x: Array, kernels: tuple[Array, ...], in_dims: int) -> tuple[Array, ...]:
  """`project(x, k, in_dims)` for each kernel k of one shared input (q/k/v of one activation).

  Same values as separate projections; the backward computes x's gradient as ONE GEMM over the
  concatenated output gradients and kernels instead of a sum of one GEMM per projection. That
  is less work for XLA:CPU and keeps sums of GEMM outputs (which its oneDNN fusion cannot
  compile, docs/performance.md) out of the program.
  """
  return tuple(_project(x, kernel, in_dims) for kernel in kernels)


def _project_fanout_fwd(x, kernels, in_dims):
  return project_fanout(x, kernels, in_dims), (x, kernels)


def _project_fanout_bwd(in_dims, residuals, grads):
  x, kernels = residuals
  batch_dims = x.ndim - in_dims
  in_size = math.prod(x.shape[batch_dims:])
  tokens = math.prod(x.shape[:batch_dims])
  widths = [math.prod(k.shape[in_dims:]) for k in kernels]
  g_2d = jnp.concatenate([g.reshape(tokens, w) for g, w in zip(grads, widths)], axis=1)
  kernels_2d = jnp.concatenate([k.reshape(in_size, w) for k, w in zip(kernels, widths)], axis=1)
  grad_x = matmul(g_2d, kernels_2d.T)                           # [tokens, in]
  # One [in, sum(out_i)] weight-gradient GEMM, split: wider GEMMs run nearer peak on CPU.
  grad_stacked = matmul(x.reshape(tokens, in_size).T, g_2d)
  splits = jnp.split(grad_stacked, list(itertools.accumulate(widths))[:-1], axis=1)
  grad_kernels = tuple(part.reshape(k.shape).astype(k.dtype) for part, k in zip(splits, kernels))
  return grad_x.reshape(x.shape).astype(x.dtype), grad_kernels


project_fanout.defvjp(_project_fanout_fwd, _project_fanout_bwd)


class Dense(nn.Module):
  """Contracts the last `in_dims` input dims with a kernel of shape in_shape + features."""
  features: tuple[int, ...]
  axes: tuple[Optional[str], ...]     # logical names of the kernel: input dims then output dims
  in_dims: int = 1
  use_bias: bool = True
  init_kind: str = "torch"
  bias_init: Optional[str] = None      # defaults to `init_kind` ("torch" biases are uniform too)
  gain: float = 1.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def weights(self, in_shape: tuple[int, ...]) -> tuple[Array, Optional[Array]]:
    """(kernel, bias or None) in the compute dtype, for inputs whose last dims are `in_shape`."""
    fan_in = math.prod(in_shape)
    kernel_shape = tuple(in_shape) + tuple(self.features)
    if len(self.axes) != len(kernel_shape):
      raise ValueError(f"{self.name}: {len(self.axes)} axis names for kernel shape {kernel_shape}")
    kernel = self.param(
        "kernel", nn.with_logical_partitioning(linear_init(self.init_kind, fan_in, self.gain), self.axes),
        kernel_shape, self.param_dtype)
    if not self.use_bias:
      return kernel.astype(self.dtype), None
    bias_kind = self.bias_init or self.init_kind
    bias_kind = "zeros" if bias_kind == "normal" else bias_kind
    bias = self.param(
        "bias", nn.with_logical_partitioning(linear_init(bias_kind, fan_in, self.gain),
                                             self.axes[self.in_dims:]),
        tuple(self.features), self.param_dtype)
    return kernel.astype(self.dtype), bias.astype(self.dtype)

  def __call__(self, x: Array) -> Array:
    kernel, bias = self.weights(x.shape[-self.in_dims:])
    y = project(x.astype(self.dtype), kernel, self.in_dims)
    return y if bias is None else y + bias


def layer_norm(x: Array, scale: Array, bias: Array, epsilon: float, dtype: Any) -> Array:
  """LayerNorm over the last axis in float32 (torch semantics: biased variance), cast to dtype."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  y = (x32 - mean) * jax.lax.rsqrt(var + epsilon)
  y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
  return y.astype(dtype)


class LayerNorm(nn.Module):
  """LayerNorm computed in float32 (torch semantics: biased variance), cast back to `dtype`."""
  axis_name: Optional[str]
  epsilon: float = 1e-5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def weights(self, features: int) -> tuple[Array, Array]:
    """(scale, bias) for inputs with `features` channels."""
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
                       (features,), self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (self.axis_name,)),
                      (features,), self.param_dtype)
    return scale, bias

  def __call__(self, x: Array) -> Array:
    return layer_norm(x, *self.weights(x.shape[-1]), self.epsilon, self.dtype)


@jax.custom_vjp
def tied_logits(x: Array, table: Array) -> Array:
  """x [tokens, embed] @ table[vocab, embed]^T -> [tokens, vocab] (the tied output layer).

  Same values as the einsum; the custom backward computes the table's gradient as
  (x^T @ g)^T, a plain GEMM over the [tokens, vocab] gradient as it lies in memory. Autodiff's
  form contracts that gradient over its major axis, for which XLA:CPU first writes a transposed
  copy of the whole [tokens, vocab] array (the slowest single op of a small model's step).
  """
  return matmul(x, table.T)


def _tied_logits_fwd(x, table):
  return matmul(x, table.T), (x, table)


def _tied_logits_bwd(residuals, g):
  x, table = residuals
  # The barrier keeps XLA from folding the final transpose into the GEMM (which makes it a
  # slower transposed-output GEMM); transposing the small [embed, vocab] result costs little.
  table_grad = jax.lax.optimization_barrier(matmul(x.T, g)).T
  return matmul(g, table).astype(x.dtype), table_grad.astype(table.dtype)


tied_logits.defvjp(_tied_logits_fwd, _tied_logits_bwd)


class Embed(nn.Module):
  """Token embedding [vocab, embed]; `attend` gives tied output logits."""
  num_embeddings: int
  features: int
  pad_id: Optional[int] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    std = self.features ** -0.5

    def init(key, shape, dtype=jnp.float32):
      table = std * jax.random.normal(key, shape, dtype)
      if self.pad_id is not None and 0 <= self.pad_id < shape[0]:
        table = table.at[self.pad_id].set(0.0)  # fairseq zeroes the padding row
      return table

    self.embedding = self.param("embedding", nn.with_logical_partitioning(init, ("vocab", "embed")),
                                (self.num_embeddings, self.features), self.param_dtype)

  def __call__(self, tokens: Array) -> Array:
    return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)  # [batch, length, embed]

  def attend(self, x: Array) -> Array:
    """Tied logits [..., vocab] (see `tied_logits`)."""
    flat = x.astype(self.dtype).reshape(-1, x.shape[-1])
    logits = tied_logits(flat, self.embedding.astype(self.dtype))
    return logits.reshape(x.shape[:-1] + (self.num_embeddings,))


@dataclasses.dataclass(frozen=True)
class AttentionAxes:
  """Logical names used by one attention block (text and vision use different `embed`)."""
  embed: str = "embed"
  heads: str = "heads"
  kv: str = "kv"


def make_causal_mask(segment_ids: Array) -> Array:
  """[batch, 1, q, k] bool: same non-pad segment and k <= q. segment_ids: [batch, length], 0 = pad."""
  length = segment_ids.shape[-1]
  causal = jnp.tril(jnp.ones((length, length), bool))
  same = segment_ids[:, :, None] == segment_ids[:, None, :]
  key_real = (segment_ids != 0)[:, None, :]
  return (causal[None] & same & key_real)[:, None]


class Attention(nn.Module):
  """Multi-head attention with optional Sub-LN before out_proj, xPos and a KV cache.

  Parameter names follow HF Kosmos-2 (`q_proj`, `k_proj`, `v_proj`, `out_proj`, `inner_attn_ln`)
  so that weight conversion is a rename plus a reshape.
  """
  num_heads: int
  head_dim: int
  out_features: int
  axes: AttentionAxes = AttentionAxes()
  dropout_rate: float = 0.0
  inner_ln: bool = False
  layer_norm_eps: float = 1e-5
  softmax_fp32: bool = True
  xpos: bool = False
  xpos_scale_base: int = 512
  xpos_gamma: float = 0.4
  init_kind: str = "torch"
  vo_gain: float = 1.0                 # Sub-LN init gain on v_proj and out_proj
  # The mask is causal (plus padding/segments): queries attend only keys up to their block's
  # end (`causal_query_blocks`), skipping the products with keys every query there masks.
  causal: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def _projections(self, inputs_q: Array, inputs_kv: Array) -> tuple[Array, Array, Array]:
    """q, k, v [batch, len, heads, kv]; projections of one input share one backward GEMM."""
    a = self.axes
    dense = lambda name, gain=1.0: Dense(
        features=(self.num_heads, self.head_dim), axes=(a.embed, a.heads, a.kv),
        init_kind=self.init_kind, gain=gain, dtype=self.dtype, param_dtype=self.param_dtype,
        name=name)
    names = (("q_proj", 1.0, inputs_q), ("k_proj", 1.0, inputs_kv),
             ("v_proj", self.vo_gain, inputs_kv))
    weights = [dense(name, gain).weights(x.shape[-1:]) for name, gain, x in names]
    groups = [(inputs_q, (0, 1, 2))] if inputs_q is inputs_kv else [(inputs_q, (0,)),
                                                                   (inputs_kv, (1, 2))]
    outputs = [None, None, None]
    for x, members in groups:
      projected = project_fanout(x.astype(self.dtype), tuple(weights[i][0] for i in members), 1)
      for i, y in zip(members, projected):
        bias = weights[i][1]
        outputs[i] = y if bias is None else y + bias
    return tuple(outputs)

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, *, mask: Optional[Array] = None,
               positions: Optional[Array] = None, key_valid: Optional[Array] = None,
               deterministic: bool = True, decode: bool = False) -> Array:
    """inputs_q [batch, q_len, embed], inputs_kv [batch, kv_len, embed].

    mask: [batch, 1|heads, q_len, kv_len] bool (full mode). In decode mode the mask comes from the
    cache (causal over cache slots, padding from `key_valid` [batch, q_len]).
    positions: [batch, q_len] token positions for xPos (self-attention only).
    """
    a = self.axes
    q, k, v = self._projections(inputs_q, inputs_kv)      # [batch, q_len|kv_len, heads, kv]
    q = nn.with_logical_constraint(q, ("batch", "length", a.heads, a.kv))
    k = nn.with_logical_constraint(k, ("batch", "length", a.heads, a.kv))
    v = nn.with_logical_constraint(v, ("batch", "length", a.heads, a.kv))

    if decode:
      q, parts = self._update_cache(q, k, v, positions, key_valid)
    else:
      if self.xpos:
        center = positions_lib.xpos_center(k.shape[1])
        k = self._rotate(k, positions, center, downscale=True)
        q = self._rotate(q, positions, center, downscale=False)
      parts = [(_keys_head_major(k), _values_head_major(v), mask)]

    q = jnp.swapaxes(q * (self.head_dim ** -0.5), 1, 2)          # [batch, heads, q_len, kv]
    if self.causal and not decode and mask is not None:
      out = self._causal_blocks_attention(q, parts[0], deterministic)
    else:
      out = self._softmax_attention(q, parts, deterministic)
    out = jnp.swapaxes(out, 1, 2)                                  # [batch, q_len, heads, kv]
    out = nn.with_logical_constraint(out, ("batch", "length", a.heads, a.kv))
    if self.inner_ln:
      batch, length = out.shape[:2]
      out = out.reshape(batch, length, self.num_heads * self.head_dim)
      out = LayerNorm(a.embed, self.layer_norm_eps, self.dtype, self.param_dtype,
                      name="inner_attn_ln")(out)
      out = out.reshape(batch, length, self.num_heads, self.head_dim)
    return Dense(features=(self.out_features,), axes=(a.heads, a.kv, a.embed), in_dims=2,
                 init_kind=self.init_kind, gain=self.vo_gain, dtype=self.dtype,
                 param_dtype=self.param_dtype, name="out_proj")(out)

  def _causal_blocks_attention(self, q: Array, part: tuple, deterministic: bool) -> Array:
    """Causal attention a block of queries at a time, each over the keys up to its block's end
    (the rest are masked for every query of the block): ~25% fewer score/PV products at 2
    blocks, ~37% at 4. Real queries get exactly the full form's result; a fully-masked
    (padding) query row averages over its block's keys instead of all keys.
    q [batch, heads, q_len, kv]; part = (keys [b, h, kv, k_len], values [b, h, k_len, kv], mask)."""
    keys, values, mask = part
    bounds = causal_query_blocks(q.shape[2])
    if len(bounds) == 1:
      return self._softmax_attention(q, [part], deterministic)
    outputs = [self._softmax_attention(
        q[:, :, start:end], [(keys[..., :end], values[:, :, :end], mask[..., start:end, :end])],
        deterministic) for start, end in bounds]
    return jnp.concatenate(outputs, axis=2)

  def _softmax_attention(self, q: Array, parts: list, deterministic: bool) -> Array:
    """softmax(q k^T) v over the keys of all `parts` [(keys, values, mask or None)], as one
    softmax: the parts share one running max and one normaliser.

    Head-major operands (q [b, h, q, d], keys [b, h, d, k], values [b, h, k, d]): both products
    are plain batched GEMMs, so XLA:CPU copies no [b, h, *, *] operand or output into another
    layout; the KV cache is stored in this layout too. Decoding one token passes the cache as it
    was and the new key/value as two parts, so the cache update feeds only the next step and is
    done in place (docs/performance.md, "Decoding", fourth round).
    """
    scores = []
    for keys, _, mask in parts:
      part = einsum("bhqd,bhdk->bhqk", q, keys.astype(q.dtype))  # [batch, heads, q, keys]
      if self.softmax_fp32:
        part = part.astype(jnp.float32)
      scores.append(part if mask is None else jnp.where(mask, part, NEG_INF))
    row_max = jax.lax.stop_gradient(
        functools.reduce(jnp.maximum, [jnp.max(part, -1, keepdims=True) for part in scores]))
    # Softmax normalised after the PV product (exactly softmax(scores) @ v; dropout's mask and
    # 1/(1-p) commute with the division): the division is a [.., q, d] epilogue of the GEMM
    # instead of a [.., q, k] pass before it, which XLA:CPU's oneDNN fusion cannot compile
    # (docs/performance.md).
    normalizer, out = 0.0, 0.0                                     # [b, h, q, 1], [b, h, q, d]
    for part, (_, values, _) in zip(scores, parts):
      unnormalized = jnp.exp(part - row_max)
      normalizer = normalizer + jnp.sum(unnormalized, axis=-1, keepdims=True)
      weights = unnormalized.astype(self.dtype)
      if self.dropout_rate > 0:
        weights = nn.Dropout(self.dropout_rate)(weights, deterministic=deterministic)
      out = out + einsum("bhqk,bhkd->bhqd", weights, values.astype(self.dtype))
    return (out / normalizer).astype(self.dtype)

  def _rotate(self, x: Array, positions: Array, center: int, downscale: bool) -> Array:
    if positions is None:
      raise ValueError("xPos attention needs token positions")
    y = positions_lib.apply_xpos(x, positions, center=center, scale_base=self.xpos_scale_base,
                                 gamma=self.xpos_gamma, downscale=downscale)
    return y.astype(self.dtype)

  def _update_cache(self, q, k, v, positions, key_valid):
    """Writes this call's keys/values at the cache index; returns (q, attention parts [(keys
    [b, h, d, n], values [b, h, n, d], mask [b, 1, q, n])]).

    Keys are cached after xPos rotation with a centre fixed by the cache length, which gives the
    same scores as torchscale's re-rotation of all keys at every step (docs/model.md §4).
    The first (initialising) call only creates the zero cache. A one-token call attends to the
    cache as it was plus the new key/value, so nothing reads the updated cache in this step.
    """
    initialized = self.has_variable("cache", "cached_key")
    batch, q_len, heads, head_dim = k.shape
    cached_key = self.variable("cache", "cached_key", jnp.zeros,
                               (batch, heads, head_dim, q_len), self.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros,
                                 (batch, heads, q_len, head_dim), self.dtype)
    cached_valid = self.variable("cache", "cached_valid", jnp.zeros, k.shape[:2], bool)
    cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    max_len = cached_key.value.shape[-1]
    if key_valid is None:
      key_valid = jnp.ones((batch, q_len), bool)
    if not initialized:
      # Shape-only pass: behave as a full causal forward over the given tokens.
      mask = make_causal_mask(key_valid.astype(jnp.int32))
      if self.xpos:
        center = positions_lib.xpos_center(q_len)
        k = self._rotate(k, positions, center, downscale=True)
        q = self._rotate(q, positions, center, downscale=False)
      return q, [(_keys_head_major(k), _values_head_major(v), mask)]
    index = cache_index.value
    if self.xpos:
      center = positions_lib.xpos_center(max_len)
      k = self._rotate(k, positions, center, downscale=True)
      q = self._rotate(q, positions, center, downscale=False)
    new_keys = _keys_head_major(k).astype(self.dtype)           # [batch, heads, kv, q_len]
    new_values = _values_head_major(v).astype(self.dtype)       # [batch, heads, q_len, kv]
    old_keys, old_values, old_valid = cached_key.value, cached_value.value, cached_valid.value
    cached_key.value = jax.lax.dynamic_update_slice(old_keys, new_keys, (0, 0, 0, index))
    cached_value.value = jax.lax.dynamic_update_slice(old_values, new_values, (0, 0, index, 0))
    cached_valid.value = jax.lax.dynamic_update_slice(old_valid, key_valid.astype(bool),
                                                      (0, index))
    cache_index.value = index + q_len
    key_slot = jnp.arange(max_len)
    if q_len == 1:
      old_mask = (key_slot[None, :] < index) & old_valid                     # [batch, max_len]
      return q, [(old_keys, old_values, old_mask[:, None, None, :]),
                 (new_keys, new_values, key_valid.astype(bool)[:, None, None, :])]
    query_slot = index + jnp.arange(q_len)
    causal = key_slot[None, :] <= query_slot[:, None]                       # [q_len, max_len]
    mask = causal[None, None] & cached_valid.value[:, None, None, :]        # [batch, 1, q, max]
    return q, [(cached_key.value, cached_value.value, mask)]


CAUSAL_BLOCK_ROWS = 128     # smallest query block; fewer, larger products below it
MAX_CAUSAL_BLOCKS = 4


def causal_query_blocks(length: int) -> list[tuple[int, int]]:
  """[(start, end)] query blocks for `Attention(causal=True)`: up to `MAX_CAUSAL_BLOCKS` equal
  blocks of at least `CAUSAL_BLOCK_ROWS` rows (the last takes any remainder); one block below
  2 x CAUSAL_BLOCK_ROWS. At the benchmark's 256 tokens, 2 blocks made the text attention's
  forward + backward ~35% faster on a 2-core CPU (docs/performance.md)."""
  count = max(1, min(MAX_CAUSAL_BLOCKS, length // CAUSAL_BLOCK_ROWS))
  size = length // count
  return [(i * size, length if i == count - 1 else (i + 1) * size) for i in range(count)]


def _keys_head_major(k: Array) -> Array:
  """[batch, length, heads, kv] -> [batch, heads, kv, length] (the scores' GEMM operand)."""
  return jnp.transpose(k, (0, 2, 3, 1))


def _values_head_major(v: Array) -> Array:
  """[batch, length, heads, kv] -> [batch, heads, length, kv]."""
  return jnp.swapaxes(v, 1, 2)


def activation_fn(name: str) -> Callable[[Array], Array]:
  if name == "gelu":          # exact (erf) GeLU, as torch F.gelu: x/2 (1 + erf(x/sqrt2))
    # jax.nn.gelu(approximate=False) goes through erfc, whose XLA:CPU expansion (exp and two
    # selects) costs ~2x erf's polynomial; both agree to float32 rounding.
    return lambda x: 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))
  if name == "quick_gelu":    # CLIP: x * sigmoid(1.702 x)
    return lambda x: x * jax.nn.sigmoid(1.702 * x)
  raise ValueError(f"unknown activation {name!r}")


class Mlp(nn.Module):
  """fc1 -> activation (fp32) -> dropout -> [Sub-LN "ffn_layernorm"] -> fc2."""
  hidden: int
  out_features: int
  activation: str = "gelu"
  embed_axis: str = "embed"
  mlp_axis: str = "mlp"
  activation_dropout: float = 0.0
  inner_ln: bool = False
  layer_norm_eps: float = 1e-5
  init_kind: str = "torch"
  gain: float = 1.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    h = Dense((self.hidden,), (self.embed_axis, self.mlp_axis), init_kind=self.init_kind, gain=self.gain,
              dtype=self.dtype, param_dtype=self.param_dtype, name="fc1")(x)
    h = nn.with_logical_constraint(h, ("batch", "length", self.mlp_axis))
    norm = (LayerNorm(self.mlp_axis, self.layer_norm_eps, self.dtype, self.param_dtype,
                      name="ffn_layernorm").weights(self.hidden) if self.inner_ln else None)
    activate = functools.partial(_mlp_hidden, self.activation, self.layer_norm_eps, self.dtype)
    if self.activation_dropout > 0 and not deterministic:
      h = activate(h, None)
      h = nn.Dropout(self.activation_dropout)(h, deterministic=deterministic)
      h = h if norm is None else layer_norm(h, *norm, self.layer_norm_eps, self.dtype)
    else:
      # Recomputed in the backward pass from fc1's output, so the backward keeps one
      # [tokens, hidden] array per MLP instead of two or three (activation, Sub-LN output):
      # an elementwise pass traded for ~8-16 MB per layer at the benchmark shape.
      h = jax.checkpoint(activate)(h, norm)
    return Dense((self.out_features,), (self.mlp_axis, self.embed_axis), init_kind=self.init_kind,
                 gain=self.gain, dtype=self.dtype, param_dtype=self.param_dtype, name="fc2")(h)


def _mlp_hidden(activation: str, epsilon: float, dtype: Any, h: Array,
                norm: Optional[tuple[Array, Array]]) -> Array:
  """The MLP's activation (in float32), then its Sub-LN when `norm` = (scale, bias)."""
  h = activation_fn(activation)(h.astype(jnp.float32)).astype(dtype)
  return h if norm is None else layer_norm(h, *norm, epsilon, dtype)


def remat_policy(name: str):
  """Named jax.checkpoint policies (MaxText/t5x style)."""
  policies = {
      "full": None,  # save nothing: recompute the whole layer
      "minimal": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
      "dots": jax.checkpoint_policies.checkpoint_dots,
  }
  if name not in policies:
    raise ValueError(f"unknown remat policy {name!r}; choose 'none' or one of {sorted(policies)}")
  return policies[name]


def resolve_unroll(unroll: int, num_layers: int) -> int:
  """Layers per scan iteration: `unroll` if positive; 0 (auto) = all layers on CPU, where the
  rolled loop's stacked residual buffers cost more than the compile time saved, else 1."""
  if unroll > 0:
    return min(unroll, num_layers)
  return num_layers if jax.default_backend() == "cpu" else 1


def apply_layer_stack(layer_cls: type[nn.Module], layer_kwargs: dict, num_layers: int,
                      x: Array, *args, scan: bool, remat: str,
                      unroll: int = 0) -> tuple[Array, Any]:
  """Applies `num_layers` copies of `layer_cls` to x; call inside a compact method.

  The layer's __call__(x, *args) must return (x, y) (the nn.scan carry convention; y is None
  unless the layer emits per-layer outputs, which come back stacked on a leading axis). With
  scan=True the params live under `layers` with a leading 'layers' axis (one compiled body);
  otherwise under `layers_0..N-1`, as in HF checkpoints. `args` are broadcast to every layer.
  remat != "none" rematerialises each layer with that named policy. `unroll`: layers per scan
  iteration (`resolve_unroll`; the parameter layout does not change).
  Returns (x, stacked per-layer outputs or None).
  """
  cls = layer_cls
  if remat != "none":
    cls = nn.remat(cls, policy=remat_policy(remat), prevent_cse=not scan)
  if scan:
    stack = nn.scan(
        cls,
        variable_axes={"params": 0, "cache": 0, "intermediates": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast,) * len(args),
        length=num_layers,
        unroll=resolve_unroll(unroll, num_layers),
        metadata_params={nn.PARTITION_NAME: "layers"})
    return stack(**layer_kwargs, name="layers")(x, *args)
  outputs = []
  for i in range(num_layers):
    x, y = cls(**layer_kwargs, name=f"layers_{i}")(x, *args)
    outputs.append(y)
  stacked = None if outputs[0] is None else jnp.stack(outputs)
  return x, stacked
