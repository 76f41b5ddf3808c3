"""Masked next-token cross-entropy and the model call on a feature-converter batch.

Only discrete text tokens count (docs/data.md §3): the feature converter's loss weights are
0 on padding, image placeholders and instruction prompts. Sums are returned, not means, so that
gradient accumulation over microbatches divides once by the total weight and equals the
full-batch gradient exactly.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from kosmos_jax.models import layers


def model_logits(model: nn.Module, params: Any, batch: dict[str, jax.Array], *,
                 deterministic: bool, dropout_rng: Optional[jax.Array] = None,
                 output: str = "logits") -> Any:
  """[batch, length, vocab] float32 logits for a converter batch (images optional); with
  output="hidden", the output layer's (hidden, table) instead (`TextDecoder`)."""
  rngs = {} if deterministic else {"dropout": dropout_rng}
  return model.apply(
      {"params": params}, batch["decoder_input_tokens"], images=batch.get("images"),
      image_token_mask=batch.get("decoder_image_token_mask"),
      segment_ids=batch.get("decoder_segment_ids"), positions=batch.get("decoder_positions"),
      deterministic=deterministic, rngs=rngs, output=output)


def output_layer_statistics(hidden: jax.Array, table: jax.Array, targets: jax.Array,
                            weights: jax.Array, chunks: int) -> dict[str, jax.Array]:
  """Weighted sums loss_sum (next-token cross-entropy), weight_sum and correct_sum (scalars,
  float32) of logits = hidden @ table^T, computed `chunks` slices of the length at a time, so
  the whole batch's [tokens, vocab] logits and their gradient never exist at once.

  hidden [batch, length, embed], table [vocab, embed] (both in the compute dtype), targets and
  weights [batch, length]. `chunks` is rounded down to a divisor of the length; 1 is one slice.
  Under differentiation the forward pass already computes each slice's gradients (softmax -
  one_hot, then the two GEMMs) and keeps only them, [batch, length, embed] and [embed, vocab]:
  the backward pass scales them by the loss's cotangent. The same numbers as the one-piece
  loss, to float rounding (the table gradient is summed slice by slice, in float32).
  Weights and targets get no gradient (they are data). This is MaxText's vocabulary tiling;
  docs/performance.md has the memory it saves.
  """
  weights = weights.astype(jnp.float32)
  length = hidden.shape[1]
  chunks = max(d for d in range(1, max(1, min(chunks, length)) + 1) if length % d == 0)
  loss_sum, correct_sum = _sliced_statistics(hidden, table, targets, weights, chunks)
  return {"loss_sum": loss_sum, "weight_sum": jnp.sum(weights), "correct_sum": correct_sum}


def _slice_statistics(table, hidden, targets, weights, with_grads: bool):
  """Loss and correct sums of one slice [batch, slice, ...]; with its gradients if asked."""
  rows = hidden.reshape(-1, hidden.shape[-1])                              # [tokens, embed]
  # float32 products of bf16 operands: what the loss needs, and XLA:CPU's native bf16 GEMM
  logits = jnp.matmul(rows, table.T, preferred_element_type=jnp.float32)   # [tokens, vocab]
  targets, weights = targets.reshape(-1), weights.reshape(-1)
  log_normalizer = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[:, None], axis=-1, mode="clip")[:, 0]
  # "Correct" = the target's logit is the row's maximum: argmax's answer except on exact ties,
  # as one max-reduce (shared with the logsumexp's). XLA:CPU runs argmax's (value, index)
  # reduce single-threaded: 27 ms of a 0.66 s benchmark step over [2048, 8000] logits.
  correct = (target_logit >= jnp.max(logits, axis=-1)).astype(jnp.float32)
  sums = (jnp.sum((log_normalizer - target_logit) * weights), jnp.sum(correct * weights))
  if not with_grads:
    return sums, None
  # The cross-entropy's gradient written out, softmax - one_hot(target): one fused pass over
  # the logits (autodiff of a one-hot pick plus logsumexp costs three more); the forward picks
  # the target with a gather (a gather's gradient is a scatter, slow on XLA:CPU).
  one_hot = jax.nn.one_hot(targets, logits.shape[-1], dtype=jnp.float32)
  logits_grad = ((jnp.exp(logits - log_normalizer[:, None]) - one_hot)
                 * weights[:, None]).astype(hidden.dtype)                  # [tokens, vocab]
  hidden_grad = layers.matmul(logits_grad, table).reshape(hidden.shape)
  # [embed, vocab]: the GEMM over the gradient as it lies (see layers.tied_logits)
  table_grad_t = jnp.matmul(rows.T, logits_grad, preferred_element_type=jnp.float32)
  return sums, (hidden_grad, table_grad_t)


def _scan_slices(hidden, table, targets, weights, chunks: int, with_grads: bool):
  """Runs `_slice_statistics` over the slices in one loop, summing as it goes.

  Each row's positions are first reordered so that its loss positions (weight != 0) come
  first, in order; the loop then stops after the last slice that holds a loss position of any
  row. Positions with zero weight (image placeholders, padding, prompts) add nothing to the
  sums or gradients, so skipping them changes no number; a batch with a quarter of its
  positions on images computes a quarter fewer logits. The reorder is within rows, so a
  batch-sharded array stays where it is.
  """
  batch, length = targets.shape
  size = length // chunks
  order = jnp.argsort(weights == 0, axis=1, stable=True)                  # [batch, length]
  def take(x, index=order):                            # rows reordered along the length
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)
  hidden_s, targets_s, weights_s = take(hidden), take(targets), take(weights)
  longest = jnp.max(jnp.sum(weights != 0, axis=1))
  needed = (longest + size - 1) // size                                   # slices with a loss

  def body(index, carry):
    sums, table_grad_t, hidden_grad_s = carry
    piece = lambda x: jax.lax.dynamic_slice_in_dim(x, index * size, size, axis=1)
    slice_sums, grads = _slice_statistics(table, piece(hidden_s), piece(targets_s),
                                          piece(weights_s), with_grads=with_grads)
    sums = jax.tree_util.tree_map(jnp.add, sums, slice_sums)
    if grads is not None:
      table_grad_t = table_grad_t + grads[1]
      hidden_grad_s = jax.lax.dynamic_update_slice_in_dim(hidden_grad_s, grads[0], index * size,
                                                          axis=1)
    return sums, table_grad_t, hidden_grad_s

  zero = jnp.zeros((), jnp.float32)
  grads_init = ((jnp.zeros(table.shape[::-1], jnp.float32), jnp.zeros_like(hidden))
                if with_grads else (None, None))
  sums, table_grad_t, hidden_grad_s = jax.lax.fori_loop(0, needed, body, ((zero, zero),) + grads_init)
  if not with_grads:
    return sums, None
  hidden_grad = take(hidden_grad_s, jnp.argsort(order, axis=1))          # back in place
  # The barrier keeps XLA from folding the transpose into the last GEMM (as in tied_logits).
  table_grad = jax.lax.optimization_barrier(table_grad_t).T.astype(table.dtype)
  return sums, (hidden_grad, table_grad)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _sliced_statistics(hidden, table, targets, weights, chunks):
  return _scan_slices(hidden, table, targets, weights, chunks, with_grads=False)[0]


def _sliced_statistics_fwd(hidden, table, targets, weights, chunks):
  return _scan_slices(hidden, table, targets, weights, chunks, with_grads=True)   # (sums, grads)


def _sliced_statistics_bwd(chunks, grads, cotangents):
  del chunks
  hidden_grad, table_grad = grads
  loss_cotangent = cotangents[0]                      # correct_sum is not differentiable
  return (hidden_grad * loss_cotangent.astype(hidden_grad.dtype),
          table_grad * loss_cotangent.astype(table_grad.dtype), None, None)


_sliced_statistics.defvjp(_sliced_statistics_fwd, _sliced_statistics_bwd)


def batch_counts(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Non-pad tokens and packed examples in a batch (for throughput metrics)."""
  segments = batch["decoder_segment_ids"]
  return {"tokens": jnp.sum(segments > 0).astype(jnp.float32),
          "examples": jnp.sum(jnp.max(segments, axis=-1)).astype(jnp.float32)}
