"""Log-likelihood of candidate continuations (multiple choice, zero-shot classification by
likelihood over class names): the prompt and its images run once per row, then its KV cache is
replicated per candidate and every candidate token is scored in one cached call."""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kosmos_jax.inference.decoding import model_inputs, prompt_inputs, cache_batch_axes, gather_cache
from kosmos_jax.inference.decoding import prefill
from kosmos_jax.models.kosmos import init_cache

Array = jax.Array


@flax.struct.dataclass
class ContinuationScores:
  """total / mean: [batch, candidates] sum and per-token mean log-likelihood of each continuation;
  num_tokens: [batch, candidates]; token_logprobs: [batch, candidates, length] (0 at padding)."""
  total: Array
  mean: Array
  num_tokens: Array
  token_logprobs: Array



def pad_sequences(sequences: Sequence[Sequence[int]], pad_id: int, length: Optional[int] = None
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Ragged token lists -> (right-padded [n, length] int32, mask [n, length] int32)."""
  if not sequences or not all(len(s) for s in sequences):
    raise ValueError("pad_sequences needs one or more non-empty sequences")
  length = length or max(len(s) for s in sequences)
  if any(len(s) > length for s in sequences):
    raise ValueError(f"a sequence is longer than length={length}")
  out = np.full((len(sequences), length), pad_id, np.int32)
  mask = np.zeros((len(sequences), length), np.int32)
  for i, seq in enumerate(sequences):
    out[i, :len(seq)], mask[i, :len(seq)] = seq, 1
  return out, mask


@functools.partial(jax.jit, static_argnames=("model", "total_len"))
def _score_prefill(model, params, tokens, segment_ids, positions, images, image_token_mask, *,
                   total_len):
  """Prompt -> (log-probs of the first continuation token [batch, vocab], cache)."""
  cache = init_cache(model, tokens.shape[0], total_len)
  logits, cache = prefill(model, params, cache, tokens, segment_ids, positions,
                          **model_inputs(images, image_token_mask))
  return jax.nn.log_softmax(logits), cache


@functools.partial(jax.jit, static_argnames=("model", "total_len"))
def _score_chunk(model, params, cache, first_logp, next_position, continuations, mask, *,
                 total_len):
  """Log-probs [batch, chunk, length] of continuations [batch, chunk, length] (0 at padding)
  after the cached prompt, in one model call over batch*chunk rows."""
  batch, chunk, length = continuations.shape
  rows = jnp.repeat(jnp.arange(batch), chunk)                                 # [batch*chunk]
  flat = continuations.reshape(batch * chunk, length)
  flat_mask = mask.reshape(batch * chunk, length)
  cache = gather_cache(cache, cache_batch_axes(model, total_len), rows)
  positions = next_position[rows][:, None] + jnp.arange(length)[None, :]
  logits, _ = model.apply({"params": params, "cache": cache}, flat, segment_ids=flat_mask,
                          positions=positions, decode=True, mutable=["cache"])
  # Token j is predicted by the prompt's last column (j = 0) or by continuation token j - 1.
  logp = jnp.concatenate([first_logp[rows][:, None], jax.nn.log_softmax(logits[:, :-1])], axis=1)
  token_logp = jnp.take_along_axis(logp, flat[:, :, None], axis=2)[:, :, 0]
  return jnp.where(flat_mask != 0, token_logp, 0.0).reshape(batch, chunk, length)


def score_continuations(model: nn.Module, params: Any, tokens: Array, continuations: Array, *,
                        continuation_mask: Optional[Array] = None,
                        images: Optional[Array] = None, image_token_mask: Optional[Array] = None,
                        segment_ids: Optional[Array] = None, positions: Optional[Array] = None,
                        chunk_size: Optional[int] = None) -> ContinuationScores:
  """Log-likelihood of candidate continuations of each prompt (multiple choice by likelihood).

  The prompt (and its images) runs once per row; its KV cache is then replicated per candidate
  and all candidate tokens are scored in one cached call, so 1,000 class names cost one image
  encoding and one prompt pass per row.

  Args:
    model, params: as in `decode`.
    tokens: [batch, prompt_len] left-padded prompts (e.g. "<s> <image>...</image> The photo of
      the"); the continuation is scored right after the last column.
    continuations: [batch, candidates, length] per-row candidates (multiple choice), or
      [candidates, length] shared by every row (class names); right-padded.
    continuation_mask: same shape, 1 at real continuation tokens (default: all real). Build
      both from ragged lists with `pad_sequences`.
    images, image_token_mask, segment_ids, positions: the prompt's, as in `decode`.
    chunk_size: candidates per model call (bounds the replicated cache's memory); default all.
  Returns:
    ContinuationScores; pick an answer with `argmax(total)` or `argmax(mean)` over candidates.
  """
  tokens, segment_ids, positions, images, mask = prompt_inputs(tokens, segment_ids, positions,
                                                                images, image_token_mask)
  batch = tokens.shape[0]
  cont = np.asarray(continuations, np.int32)
  cont_mask = (np.ones_like(cont) if continuation_mask is None
               else np.asarray(continuation_mask, np.int32))
  if cont_mask.shape != cont.shape:
    raise ValueError(f"continuation_mask has shape {cont_mask.shape}; continuations {cont.shape}")
  if cont.ndim == 2:
    cont, cont_mask = (np.broadcast_to(x[None], (batch,) + x.shape) for x in (cont, cont_mask))
  if cont.ndim != 3 or cont.shape[0] != batch:
    raise ValueError(f"continuations must be [batch={batch}, candidates, length] or "
                     f"[candidates, length], got shape {np.shape(continuations)}")
  num = cont.shape[1]
  chunk = min(chunk_size or num, num)
  if chunk < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
  padded = -(-num // chunk) * chunk                     # candidates rounded up to whole chunks
  widths = ((0, 0), (0, padded - num), (0, 0))
  cont, cont_mask = np.pad(cont, widths), np.pad(cont_mask, widths)
  total_len = tokens.shape[1] + cont.shape[2]
  first_logp, cache = _score_prefill(model, params, tokens, segment_ids, positions, images, mask,
                                     total_len=total_len)
  next_position = positions[:, -1] + 1
  parts = [_score_chunk(model, params, cache, first_logp, next_position,
                        cont[:, i:i + chunk], cont_mask[:, i:i + chunk], total_len=total_len)
           for i in range(0, padded, chunk)]
  token_logprobs = jnp.concatenate(parts, axis=1)[:, :num]            # [batch, candidates, len]
  num_tokens = jnp.asarray(cont_mask[:, :num].sum(-1), jnp.int32)
  total = token_logprobs.sum(-1)
  return ContinuationScores(total=total, mean=total / jnp.maximum(num_tokens, 1),
                            num_tokens=num_tokens, token_logprobs=token_logprobs)
