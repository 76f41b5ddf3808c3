"""Autoregressive decoding with a KV cache, compiled as one program.

`greedy_decode` prefills the cache with the (left-padded) prompt and its images, then emits one
token per step inside a single `jax.lax.while_loop`, all under one `jax.jit`: no Python loop
per token, no recompilation per step. The loop stops early once every row has produced `eos_id`;
rows that finished keep emitting `pad_id` (Hugging Face semantics), so a batch returns a
rectangular array of prompt + new tokens.

The pieces are kept separate so other strategies can reuse them:
  * `init_cache`       a zero KV cache for any module that supports `decode=True`;
  * `prefill` / `step` one model call in decode mode;
  * `DecodeState`      the loop carry;
  * `decode_loop`      the loop, parameterised by a token-selection function
                       `select(logits [batch, vocab], state) -> tokens [batch]`
                       (greedy = argmax; sampling would draw here).

Positions of generated tokens (`position_mode`):
  "skip_padding"  position = number of real tokens before it in its row, i.e. continues the
                  padding-skipping positions of the prompt (what training sees; left padding
                  does not change the result). The default.
  "slot"          position = its slot in the padded row. This is what Hugging Face Kosmos-2's
                  `generate` does (it derives step positions from the cache length), so the
                  HF-compatible API uses it; it equals "skip_padding" when there is no padding.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from kosmos_jax.models.decoder import padded_positions

Array = jax.Array
POSITION_MODES = ("skip_padding", "slot")


@flax.struct.dataclass
class DecodeState:
  """Carry of the decoding loop.

  step:       number of tokens generated so far (scalar int32).
  cache:      the model's 'cache' collection.
  sequences:  [batch, prompt_len + max_new_tokens] prompt followed by generated tokens (pad after).
  next_token: [batch] the token generated last (fed to the model at the next step).
  done:       [batch] bool, the row has produced eos.
  num_real:   [batch] real (non-pad) tokens of each row so far (for "skip_padding" positions).
  """
  step: Array
  cache: Any
  sequences: Array
  next_token: Array
  done: Array
  num_real: Array


@flax.struct.dataclass
class DecodeOutput:
  """sequences: [batch, prompt_len + max_new_tokens]; only the first `prompt_len + num_generated`
  columns were produced (the rest is pad). done: [batch] whether each row emitted eos."""
  sequences: Array
  num_generated: Array
  done: Array


def init_cache(model: nn.Module, batch: int, max_len: int) -> Any:
  """A zero KV cache (the 'cache' collection) for `batch` rows of up to `max_len` tokens."""
  tokens = jnp.zeros((batch, max_len), jnp.int32)
  shapes = jax.eval_shape(
      lambda: model.init({"params": jax.random.key(0)}, tokens, decode=True)["cache"])
  return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), nn.unbox(shapes))


def prefill(model: nn.Module, params: Any, cache: Any, tokens: Array, segment_ids: Array,
            positions: Array, **model_inputs) -> tuple[Array, Any]:
  """Runs the prompt through the model in decode mode, filling the cache.

  Returns (logits of the last prompt column [batch, vocab], cache).
  """
  logits, variables = model.apply({"params": params, "cache": cache}, tokens,
                                  segment_ids=segment_ids, positions=positions, decode=True,
                                  mutable=["cache"], **model_inputs)
  return logits[:, -1], variables["cache"]


def step(model: nn.Module, params: Any, cache: Any, token: Array, position: Array
         ) -> tuple[Array, Any]:
  """Feeds one token per row ([batch]) at `position` ([batch]); returns (logits [batch, vocab],
  cache)."""
  logits, variables = model.apply(
      {"params": params, "cache": cache}, token[:, None], segment_ids=jnp.ones_like(token)[:, None],
      positions=position[:, None], decode=True, mutable=["cache"])
  return logits[:, 0], variables["cache"]


def decode_loop(model: nn.Module, params: Any, state: DecodeState, *, prompt_len: int,
                max_new_tokens: int,
                select: Callable[[Array, Optional[DecodeState]], Array],
                eos_id: Array, pad_id: Array, slot_positions: Array) -> DecodeState:
  """Generates until `max_new_tokens` tokens or until every row is done.

  `state` holds the first generated token (from the prefill) in `next_token`, already written to
  `sequences` and counted in `step`. `eos_id`/`pad_id` are traced int32 scalars (eos -1: never
  stop early) and `slot_positions` a traced bool (True: "slot" positions, else "skip_padding"),
  so changing them does not recompile.
  """

  def cond(s: DecodeState) -> Array:
    return (s.step < max_new_tokens) & ~jnp.all(s.done)

  def body(s: DecodeState) -> DecodeState:
    slot = prompt_len + s.step - 1                              # where next_token sits
    position = jnp.where(slot_positions, slot, s.num_real)      # [batch]
    logits, cache = step(model, params, s.cache, s.next_token, position)
    token = select(logits, s)
    token = jnp.where(s.done, pad_id, token)
    done = s.done | (token == eos_id)
    sequences = jax.lax.dynamic_update_slice(s.sequences, token[:, None].astype(s.sequences.dtype),
                                             (0, prompt_len + s.step))
    return DecodeState(step=s.step + 1, cache=cache, sequences=sequences, next_token=token,
                       done=done, num_real=s.num_real + 1)

  return jax.lax.while_loop(cond, body, state)


def greedy_select(logits: Array, state: Optional[DecodeState]) -> Array:
  """argmax over the vocabulary (ties go to the lowest id, as torch.argmax)."""
  del state
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "select", "max_new_tokens"))
def _decode(model, params, tokens, segment_ids, positions, images, image_token_mask, eos_id,
            pad_id, slot_positions, *, select, max_new_tokens) -> DecodeOutput:
  """Prefill + `decode_loop` as one program. `select` picks tokens (state is None for the first
  token, which comes from the prefill)."""
  batch, prompt_len = tokens.shape
  cache = init_cache(model, batch, prompt_len + max_new_tokens)
  inputs = {} if images is None else dict(images=images, image_token_mask=image_token_mask)
  logits, cache = prefill(model, params, cache, tokens, segment_ids, positions, **inputs)
  first = select(logits, None)
  sequences = jnp.full((batch, prompt_len + max_new_tokens), pad_id.astype(tokens.dtype))
  sequences = sequences.at[:, :prompt_len].set(tokens).at[:, prompt_len].set(first)
  done = first == eos_id
  state = DecodeState(step=jnp.array(1, jnp.int32), cache=cache, sequences=sequences,
                      next_token=first, done=done,
                      num_real=jnp.sum(segment_ids != 0, axis=1).astype(jnp.int32))
  state = decode_loop(model, params, state, prompt_len=prompt_len, max_new_tokens=max_new_tokens,
                      select=select, eos_id=eos_id, pad_id=pad_id,
                      slot_positions=slot_positions)
  return DecodeOutput(sequences=state.sequences, num_generated=state.step, done=state.done)


def greedy_decode(model: nn.Module, params: Any, tokens: Array, *,
                  max_new_tokens: int, eos_id: Optional[int], pad_id: int,
                  images: Optional[Array] = None, image_token_mask: Optional[Array] = None,
                  segment_ids: Optional[Array] = None, positions: Optional[Array] = None,
                  position_mode: str = "skip_padding") -> DecodeOutput:
  """Greedy decoding of a batch of prompts; one compiled program per shape/setting.

  Args:
    model: a `Kosmos` module (any linen module with the same call signature and a KV cache).
    params: its parameters (may be sharded; the computation follows them).
    tokens: [batch, prompt_len] int prompts, left-padded (the last column must be real).
    max_new_tokens: tokens to generate per row (the loop may stop earlier, see `eos_id`).
    eos_id: end-of-sequence id; None never stops early.
    pad_id: written after eos, and into unused columns.
    images: [batch, num_images, H, W, 3] for the prompt (uint8, or float already normalised).
    image_token_mask: [batch, prompt_len], 1 at image placeholder positions.
    segment_ids: [batch, prompt_len], 0 = padding, 1 = real (default: all real).
    positions: [batch, prompt_len] prompt positions (default: skip padding, as in training).
    position_mode: positions of generated tokens, "skip_padding" or "slot" (module docstring).
  Returns:
    DecodeOutput; `sequences[:, :prompt_len + num_generated]` is what HF `generate` returns.
  """
  if position_mode not in POSITION_MODES:
    raise ValueError(f"position_mode={position_mode!r}; choose one of {POSITION_MODES}")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  if (images is None) != (image_token_mask is None):
    raise ValueError("pass images and image_token_mask together (or neither)")
  tokens = jnp.asarray(tokens, jnp.int32)
  segment_ids = (jnp.ones_like(tokens) if segment_ids is None
                 else jnp.asarray(segment_ids, jnp.int32))
  if positions is None:
    positions = padded_positions(segment_ids)
  return _decode(model, params, tokens, segment_ids, jnp.asarray(positions, jnp.int32), images,
                 None if image_token_mask is None else jnp.asarray(image_token_mask, jnp.int32),
                 jnp.asarray(-1 if eos_id is None else eos_id, jnp.int32),
                 jnp.asarray(pad_id, jnp.int32), jnp.asarray(position_mode == "slot"),
                 select=greedy_select, max_new_tokens=max_new_tokens)
