"""Autoregressive decoding with a KV cache, compiled once per shape, and likelihood scoring.

Entry points:
  decode(model, params, tokens, DecodeConfig(...), images=..., constraint=..., rng=...)
      greedy, sampling (temperature / top-k / top-p) or beam search; optionally constrained to a
      candidate set (`PrefixTrie`) and with no-repeat-n-gram blocking.
  (scoring of candidate continuations lives in `kosmos_jax.inference.scoring`)

Every strategy prefills the cache with the (left-padded) prompt and its images, then emits one
token per step inside a single `jax.lax.while_loop`: three jitted programs per call (images;
prompt + first token; the loop), dispatched back to back without waiting, each compiled with the
XLA:CPU options that suit it (`_programs`). No Python loop per token and no recompilation per
step. The loop stops once every row is finished. Rows
that finished keep emitting `pad_id` (Hugging Face semantics), so a batch returns a rectangular
array of prompt + new tokens.

Scores are log-probabilities of the model's own distribution (log_softmax of the raw logits).
Blocking (constraints, repeated n-grams) removes tokens without renormalising, as HF does.

Beam search (t5x-style alive/finished sets): the prompt is prefilled once per row, its cache is
replicated per beam and gathered by beam parent at every step. A hypothesis that ends in `eos`, or
reaches `max_new_tokens`, is finished with score `sum_logprob / length ** length_penalty`, where
`length` counts the generated tokens including eos. This is the fairseq convention, which the
unilm Kosmos evaluation uses, and the form of HF's `length_penalty` (alpha 0: raw log-probability;
alpha > 0 favours longer outputs). A row stops early only when no alive beam can still beat its
worst finished hypothesis, so the result equals running to `max_new_tokens`.

Positions of generated tokens (`position_mode`):
  "skip_padding"  position = number of real tokens before it in its row, i.e. continues the
                  padding-skipping positions of the prompt (what training sees; left padding
                  does not change the result). The default.
  "slot"          position = its slot in the padded row. This is what Hugging Face Kosmos-2's
                  `generate` does (it derives step positions from the cache length), so the
                  HF-compatible API uses it; it equals "skip_padding" when there is no padding.

The pieces are public so other strategies can reuse them: `init_cache`, `prefill`, `step`,
`DecodeState` and `decode_loop(select=...)` with `select(logits [batch, vocab], state) -> tokens`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kosmos_jax.inference.constraints import PrefixTrie  # re-exported: decoding.PrefixTrie
from kosmos_jax.models import layers as layers_lib
from kosmos_jax.models import param_layout
from kosmos_jax.models.decoder import padded_positions
from kosmos_jax.models.kosmos import Kosmos
from kosmos_jax.models.kosmos import init_cache
from kosmos_jax.training import xla_cpu

Array = jax.Array
POSITION_MODES = ("skip_padding", "slot")
STRATEGIES = ("greedy", "sample", "beam")
_TRACED_FLOATS = ("temperature", "top_p", "length_penalty")
NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  """How to decode.

  strategy: "greedy", "sample" or "beam".
  max_new_tokens: tokens to generate per row (fewer when every row stops at eos earlier).
  eos_id: end-of-sequence id (`</s>`); None never stops early.
  pad_id: written after eos and into unused columns.
  beam_size: beams per row ("beam"); the paper uses 5 for captions and 2 for ImageNet.
  length_penalty: alpha of `length ** alpha` ("beam"; module docstring).
  temperature, top_k, top_p: "sample" only; top_k 0 and top_p 1.0 disable those filters.
  no_repeat_ngram_size: n > 0 forbids any n-gram to occur twice in a row, prompt included
    (HF `no_repeat_ngram_size`); padding slots are not part of any n-gram.
  position_mode: positions of generated tokens, "skip_padding" or "slot" (module docstring).
  """
  strategy: str = "greedy"
  max_new_tokens: int = 20
  eos_id: Optional[int] = 2
  pad_id: int = 1
  beam_size: int = 1
  length_penalty: float = 1.0
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  no_repeat_ngram_size: int = 0
  position_mode: str = "skip_padding"

  def validate(self) -> "DecodeConfig":
    """Raises ValueError naming every field whose value cannot work."""
    problems = []
    if self.strategy not in STRATEGIES:
      problems.append(f"strategy={self.strategy!r}; choose one of {STRATEGIES}")
    if self.max_new_tokens < 1:
      problems.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
    if self.beam_size < 1:
      problems.append(f"beam_size must be >= 1, got {self.beam_size}")
    if not self.temperature > 0:
      problems.append(f"temperature must be > 0, got {self.temperature} (for the most likely "
                      "token use strategy='greedy')")
    if self.top_k < 0:
      problems.append(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
    if not 0 < self.top_p <= 1:
      problems.append(f"top_p must be in (0, 1] (1 disables it), got {self.top_p}")
    if self.no_repeat_ngram_size < 0:
      problems.append(f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}")
    if self.position_mode not in POSITION_MODES:
      problems.append(f"position_mode={self.position_mode!r}; choose one of {POSITION_MODES}")
    if problems:
      raise ValueError("Invalid DecodeConfig: " + "; ".join(problems))
    return self


@flax.struct.dataclass
class DecodeState:
  """Carry of the greedy / sampling loop.

  step:       number of tokens generated so far (scalar int32).
  cache:      the model's 'cache' collection.
  sequences:  [batch, prompt_len + max_new_tokens] prompt followed by generated tokens (pad after).
  next_token: [batch] the token generated last (fed to the model at the next step).
  done:       [batch] bool, the row has produced eos.
  num_real:   [batch] real (non-pad) tokens before `next_token` (for "skip_padding" positions).
  node:       [batch] trie node of the generated tokens (constrained decoding), else None.
  logprob:    [batch] sum of the log-probabilities of the generated tokens, or None.
  """
  step: Array
  cache: Any
  sequences: Array
  next_token: Array
  done: Array
  num_real: Array
  node: Optional[Array] = None
  logprob: Optional[Array] = None


@flax.struct.dataclass
class DecodeOutput:
  """sequences: [batch, prompt_len + max_new_tokens]; only the first `prompt_len + num_generated`
  columns were produced (the rest is pad). done: [batch] whether the (best) output ended in eos.
  scores: [batch] sum of generated log-probs (greedy / sample) or the length-penalised score of
  the best beam. beams / beam_scores: [batch, beam, length] / [batch, beam], best first (beam)."""
  sequences: Array
  num_generated: Array
  done: Array
  scores: Optional[Array] = None
  beams: Optional[Array] = None
  beam_scores: Optional[Array] = None


# ----------------------------------------------------------------------------- model calls


def cache_batch_axes(model: nn.Module, max_len: int) -> Any:
  """The batch axis of every cache leaf (-1 for leaves without one, e.g. the cache index), found
  by comparing cache shapes for 1 and 2 rows (scanned layers put the layer axis first)."""
  one, two = (jax.eval_shape(lambda b=b: init_cache(model, b, max_len)) for b in (1, 2))

  def axis(a, b):
    diff = [i for i, (x, y) in enumerate(zip(a.shape, b.shape)) if x != y]
    return diff[0] if diff else -1
  return jax.tree_util.tree_map(axis, one, two)


def gather_cache(cache: Any, axes: Any, index: Array) -> Any:
  """Rows `index` ([new_batch] int) of every cache leaf along its batch axis: replicates rows per
  beam or candidate, and reorders beams by parent."""
  return jax.tree_util.tree_map(
      lambda x, a: x if a < 0 else jnp.take(x, index, axis=a), cache, axes)


def prefill(model: nn.Module, params: Any, cache: Any, tokens: Array, segment_ids: Array,
            positions: Array, **model_inputs) -> tuple[Array, Any]:
  """Runs the prompt through the model in decode mode, filling the cache.

  Returns (logits of the last prompt column [batch, vocab], cache). For a `Kosmos` only that
  column goes through the output layer (`last_logits_only`); other modules return them all.
  """
  if isinstance(model, Kosmos):
    model_inputs = dict(model_inputs, last_logits_only=True)
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


# ----------------------------------------------------------------------------- token selection


def no_repeat_ngram_mask(sequences: Array, real: Array, length: Array, n: int,
                         vocab: int) -> Array:
  """Tokens that would complete an n-gram already present in the row (HF semantics).

  Args:
    sequences: [rows, slots] tokens; slots < `length` are filled.
    real: [rows, slots] bool, False at padding (n-grams through padding do not count).
    length: scalar, filled slots.
    n: n-gram size (>= 1).
  Returns:
    [rows, vocab] bool, True = banned.
  """
  rows, slots = sequences.shape
  if slots < n:
    return jnp.zeros((rows, vocab), bool)
  starts = slots - n + 1
  idx = length - (n - 1) + jnp.arange(n - 1)                    # the last n-1 tokens
  prefix = jnp.take(sequences, jnp.clip(idx, 0, slots - 1), axis=1)              # [rows, n-1]
  prefix_ok = jnp.all(jnp.take(real, jnp.clip(idx, 0, slots - 1), axis=1) & (idx >= 0), axis=1)
  match = (jnp.arange(starts) + n - 1 < length)[None, :] & prefix_ok[:, None]   # [rows, starts]
  for j in range(n):
    match &= real[:, j:j + starts]
    if j < n - 1:
      match &= sequences[:, j:j + starts] == prefix[:, j:j + 1]
  banned = jnp.zeros((rows, vocab), jnp.int32)
  banned = banned.at[jnp.arange(rows)[:, None], sequences[:, n - 1:]].add(match.astype(jnp.int32))
  return banned > 0


def _block(logits: Array, config: DecodeConfig, trie: Optional[PrefixTrie], node: Optional[Array],
           sequences: Array, real: Array, length: Array) -> Array:
  """Sets tokens forbidden by the constraint or by n-gram blocking to -inf.  # [rows, vocab]"""
  vocab = logits.shape[-1]
  if trie is not None:
    logits = jnp.where(trie.allowed(node, vocab), logits, NEG_INF)
  if config.no_repeat_ngram_size:
    banned = no_repeat_ngram_mask(sequences, real, length, config.no_repeat_ngram_size, vocab)
    logits = jnp.where(banned, NEG_INF, logits)
  return logits


def sample_logits(logits: Array, rng: Array, *, temperature: Any = 1.0, top_k: Any = 0,
                  top_p: Any = 1.0) -> Array:
  """Draws one token per row ([rows, vocab] -> [rows]) after temperature, then top-k (0: off),
  then top-p (nucleus: the smallest set of most likely tokens whose renormalised probability
  reaches top_p; 1.0: off), in HF's order. The knobs may be traced (no recompiles)."""
  vocab = logits.shape[-1]
  logits = logits / temperature
  ordered = -jnp.sort(-logits, axis=-1)                                # [rows, vocab] descending
  k = jnp.clip(jnp.where(top_k > 0, top_k, vocab), 1, vocab)
  kth = jnp.take_along_axis(ordered, jnp.full((logits.shape[0], 1), k - 1), axis=-1)
  ordered = jnp.where(ordered >= kth, ordered, NEG_INF)                       # top-k
  probs = jax.nn.softmax(ordered, axis=-1)
  before = jnp.cumsum(probs, axis=-1) - probs                 # mass of the more likely tokens
  keep = ((before < top_p) | (top_p >= 1.0)) & jnp.isfinite(ordered)
  cutoff = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)  # [rows, 1]
  logits = jnp.where(logits < cutoff, NEG_INF, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def first_argmax(logits: Array) -> Array:
  """[rows, vocab] -> [rows] int32: the lowest id among each row's maxima (as torch.argmax).

  Two plain reductions (max, then the lowest id attaining it) instead of argmax's paired
  (value, index) reduction, which XLA:CPU runs on one thread at several times the cost (it was
  ~7% of a batch-8 decoding step). A row of NaNs gives id 0."""
  vocab = logits.shape[-1]
  best = jnp.max(logits, axis=-1, keepdims=True)
  ids = jnp.where(logits == best, jnp.arange(vocab, dtype=jnp.int32), vocab)
  first = jnp.min(ids, axis=-1)
  return jnp.where(first < vocab, first, 0)


def greedy_select(logits: Array, state: Optional[DecodeState]) -> Array:
  """argmax over the vocabulary (ties go to the lowest id, as torch.argmax)."""
  del state
  return first_argmax(logits)


def _make_select(config: DecodeConfig, trie: Optional[PrefixTrie], real: Array, prompt_len: int,
                 rng: Optional[Array]) -> Callable[[Array, DecodeState], Array]:
  """The `select` of `decode_loop` for `config`: blocking, then argmax or a draw."""

  def select(logits: Array, state: DecodeState) -> Array:
    logits = _block(logits, config, trie, state.node, state.sequences, real,
                    prompt_len + state.step)
    if config.strategy == "sample":
      return sample_logits(logits, jax.random.fold_in(rng, state.step),
                           temperature=config.temperature, top_k=config.top_k, top_p=config.top_p)
    return greedy_select(logits, state)
  return select


# ----------------------------------------------------------------------------- greedy / sampling


def _advance(s: DecodeState, logits: Array, select, *, prompt_len: int, eos_id: Array,
             pad_id: Array, trie: Optional[PrefixTrie]) -> DecodeState:
  """Selects the next token of every row from `logits` [batch, vocab] and records it."""
  token = jnp.where(s.done, pad_id, select(logits, s))
  logprob = s.logprob
  if logprob is not None:
    token_logp = jnp.take_along_axis(jax.nn.log_softmax(logits), token[:, None], axis=1)[:, 0]
    logprob = logprob + jnp.where(s.done, 0.0, token_logp)
  node = s.node if trie is None or s.node is None else trie.next_node(s.node, token)
  sequences = jax.lax.dynamic_update_slice(
      s.sequences, token[:, None].astype(s.sequences.dtype), (0, prompt_len + s.step))
  return s.replace(step=s.step + 1, sequences=sequences, next_token=token,
                   done=s.done | (token == eos_id), node=node, logprob=logprob)


def decode_loop(model: nn.Module, params: Any, state: DecodeState, *, prompt_len: int,
                max_new_tokens: int,
                select: Callable[[Array, Optional[DecodeState]], Array],
                eos_id: Array, pad_id: Array, slot_positions: Array,
                trie: Optional[PrefixTrie] = None) -> DecodeState:
  """Generates until `max_new_tokens` tokens or until every row is done.

  `state` holds the first generated token (from the prefill) in `next_token`, already written to
  `sequences` and counted in `step`. `eos_id`/`pad_id` are traced int32 scalars (eos -1: never
  stop early) and `slot_positions` a traced bool (True: "slot" positions, else "skip_padding"),
  so changing them does not recompile. `trie` advances `state.node` when given.
  """

  def cond(s: DecodeState) -> Array:
    return (s.step < max_new_tokens) & ~jnp.all(s.done)

  def body(s: DecodeState) -> DecodeState:
    slot = prompt_len + s.step - 1                              # where next_token sits
    position = jnp.where(slot_positions, slot, s.num_real)      # [batch]
    logits, cache = step(model, params, s.cache, s.next_token, position)
    s = s.replace(cache=cache, num_real=s.num_real + 1)
    return _advance(s, logits, select, prompt_len=prompt_len, eos_id=eos_id, pad_id=pad_id,
                    trie=trie)

  return jax.lax.while_loop(cond, body, state)


def model_inputs(images, image_token_mask, image_embeds=None) -> dict:
  """The image keyword arguments of a model call: raw images, or their embeddings when the
  image program already encoded them."""
  if image_embeds is not None:
    return dict(image_embeds=image_embeds, image_token_mask=image_token_mask)
  return {} if images is None else dict(images=images, image_token_mask=image_token_mask)


def _real_slots(segment_ids: Array, max_new_tokens: int) -> Array:
  """[batch, prompt_len + max_new_tokens] bool: prompt slots that are not padding, and all new."""
  new = jnp.ones((segment_ids.shape[0], max_new_tokens), bool)
  return jnp.concatenate([segment_ids != 0, new], axis=1)


@flax.struct.dataclass
class Prompt:
  """The traced inputs of one decoding call, shared by its prefill and loop programs.

  tokens / segment_ids / positions / image_token_mask: [batch, prompt_len]; images: [batch,
  num_images, H, W, 3] or None; eos_id / pad_id: int32 scalars (eos -1: never stop early);
  slot_positions: bool scalar ("slot" positions); rng: key for "sample", else None; trie: the
  constraint or None; knobs: the traced `DecodeConfig` floats (sampling, length penalty);
  image_embeds: [batch, num_images, latents, embed] once the image program has run (then
  `images` is None)."""
  tokens: Array
  segment_ids: Array
  positions: Array
  images: Optional[Array]
  image_token_mask: Optional[Array]
  eos_id: Array
  pad_id: Array
  slot_positions: Array
  rng: Optional[Array]
  trie: Optional[PrefixTrie]
  knobs: Any
  image_embeds: Optional[Array] = None


def _greedy_start(model, params, prompt: Prompt, config: DecodeConfig) -> DecodeState:
  """Prefill and the first token: the state `_greedy_finish` continues from."""
  tokens, segment_ids = prompt.tokens, prompt.segment_ids
  batch, prompt_len = tokens.shape
  cache = init_cache(model, batch, prompt_len + config.max_new_tokens)
  logits, cache = prefill(model, params, cache, tokens, segment_ids, prompt.positions,
                          **model_inputs(prompt.images, prompt.image_token_mask,
                                       prompt.image_embeds))
  sequences = jnp.full((batch, prompt_len + config.max_new_tokens),
                       prompt.pad_id.astype(tokens.dtype))
  zeros = jnp.zeros((batch,), jnp.int32)
  state = DecodeState(
      step=jnp.array(0, jnp.int32), cache=cache, sequences=sequences.at[:, :prompt_len].set(tokens),
      next_token=zeros, done=jnp.zeros((batch,), bool),
      num_real=jnp.sum(segment_ids != 0, axis=1).astype(jnp.int32),
      node=None if prompt.trie is None else zeros, logprob=jnp.zeros((batch,), jnp.float32))
  return _advance(state, logits, _greedy_select_fn(prompt, config), prompt_len=prompt_len,
                  eos_id=prompt.eos_id, pad_id=prompt.pad_id, trie=prompt.trie)


def _greedy_finish(model, params, prompt: Prompt, state: DecodeState,
                   config: DecodeConfig) -> DecodeOutput:
  state = decode_loop(model, params, state, prompt_len=prompt.tokens.shape[1],
                      max_new_tokens=config.max_new_tokens,
                      select=_greedy_select_fn(prompt, config),
                      slot_positions=prompt.slot_positions, eos_id=prompt.eos_id,
                      pad_id=prompt.pad_id, trie=prompt.trie)
  return DecodeOutput(sequences=state.sequences, num_generated=state.step, done=state.done,
                      scores=state.logprob), state


def _greedy_select_fn(prompt: Prompt, config: DecodeConfig):
  return _make_select(config, prompt.trie,
                      _real_slots(prompt.segment_ids, config.max_new_tokens),
                      prompt.tokens.shape[1], prompt.rng)


# ----------------------------------------------------------------------------- beam search


@flax.struct.dataclass
class BeamState:
  """Carry of beam search; [batch, beam] unless noted. Dead or empty entries score -inf.

  step: tokens generated so far (scalar); cache: rows batch*beam (row b*beam + k);
  alive_seqs / finished_seqs: [batch, beam, prompt_len + max_new_tokens];
  alive_logp: summed log-probs; alive_node: trie node (0 when unconstrained);
  finished_scores: length-penalised; done: [batch], no alive beam can still improve the row.
  """
  step: Array
  cache: Any
  alive_seqs: Array
  alive_logp: Array
  alive_node: Array
  finished_seqs: Array
  finished_scores: Array
  done: Array


def _length_penalty(length: Array, alpha: float) -> Array:
  return jnp.asarray(length, jnp.float32) ** alpha


def _beam_advance(s: BeamState, logits: Array, *, config: DecodeConfig, prompt_len: int,
                  real: Array, eos_id: Array, trie: Optional[PrefixTrie], axes: Any
                  ) -> BeamState:
  """One beam step from `logits` [batch*beam, vocab] of the alive beams' last tokens."""
  batch, beam, total = s.alive_seqs.shape
  vocab = logits.shape[-1]
  logp = jax.nn.log_softmax(logits)                                           # [b*k, vocab]
  logp = _block(logp, config, trie, s.alive_node.reshape(-1),
                s.alive_seqs.reshape(batch * beam, total), real, prompt_len + s.step)
  cand = (s.alive_logp[:, :, None] + logp.reshape(batch, beam, vocab)).reshape(batch, -1)
  # 2*beam candidates: enough to keep `beam` alive ones even if `beam` of them end in eos.
  values, flat = jax.lax.top_k(cand, 2 * beam)                                # [batch, 2k]
  parent, token = flat // vocab, (flat % vocab).astype(jnp.int32)
  seqs = jnp.take_along_axis(s.alive_seqs, parent[:, :, None], axis=1)        # [batch, 2k, T]
  seqs = jax.lax.dynamic_update_slice(seqs, token[:, :, None].astype(seqs.dtype),
                                      (0, 0, prompt_len + s.step))
  length = s.step + 1                                     # generated tokens, eos included
  valid = jnp.isfinite(values)
  is_eos = token == eos_id

  # Finished: hypotheses ending in eos, and every hypothesis at the last step, if they rank
  # among the best `beam` candidates (the fairseq / HF rule; it makes one beam equal greedy).
  last = length == config.max_new_tokens
  top = (jnp.arange(2 * beam) < beam)[None, :]
  fin = jnp.where(valid & top & (is_eos | last),
                  values / _length_penalty(length, config.length_penalty), NEG_INF)
  fin_scores, fin_idx = jax.lax.top_k(jnp.concatenate([s.finished_scores, fin], axis=1), beam)
  fin_seqs = jnp.take_along_axis(jnp.concatenate([s.finished_seqs, seqs], axis=1),
                                 fin_idx[:, :, None], axis=1)

  # Alive: the best `beam` hypotheses that did not end in eos.
  alive_logp, alive_idx = jax.lax.top_k(jnp.where(is_eos, NEG_INF, values), beam)
  alive_seqs = jnp.take_along_axis(seqs, alive_idx[:, :, None], axis=1)
  alive_parent = jnp.take_along_axis(parent, alive_idx, axis=1)               # [batch, beam]
  alive_token = jnp.take_along_axis(token, alive_idx, axis=1)
  rows = (jnp.arange(batch)[:, None] * beam + alive_parent).reshape(-1)       # [batch*beam]
  node = s.alive_node
  if trie is not None:
    node = trie.next_node(s.alive_node.reshape(-1)[rows], alive_token.reshape(-1))
    node = node.reshape(batch, beam)

  # Done when the best alive beam, even at its most favourable length, cannot enter the top
  # `beam` finished (log-probs only fall as a hypothesis grows).
  best_len = jnp.where(config.length_penalty >= 0, config.max_new_tokens, length + 1)
  bound = jnp.where(last, NEG_INF, alive_logp[:, 0] / _length_penalty(best_len,
                                                                      config.length_penalty))
  done = s.done | last | (fin_scores[:, -1] >= bound)
  return BeamState(step=length, cache=gather_cache(s.cache, axes, rows), alive_seqs=alive_seqs,
                   alive_logp=alive_logp, alive_node=node, finished_seqs=fin_seqs,
                   finished_scores=fin_scores, done=done)


def _beam_start(model, params, prompt: Prompt, config: DecodeConfig) -> BeamState:
  """Prefill once per row, the cache replicated per beam, and the first beam step."""
  tokens, segment_ids = prompt.tokens, prompt.segment_ids
  batch, prompt_len = tokens.shape
  beam, total = config.beam_size, prompt_len + config.max_new_tokens
  cache = init_cache(model, batch, total)
  logits, cache = prefill(model, params, cache, tokens, segment_ids, prompt.positions,
                          **model_inputs(prompt.images, prompt.image_token_mask,
                                       prompt.image_embeds))
  rows = jnp.repeat(jnp.arange(batch), beam)                                  # [batch*beam]
  seqs = jnp.full((batch, beam, total), prompt.pad_id.astype(tokens.dtype))
  seqs = seqs.at[:, :, :prompt_len].set(tokens[:, None, :])
  first = jnp.where(jnp.arange(beam) == 0, 0.0, NEG_INF)          # one live beam to start
  state = BeamState(
      step=jnp.array(0, jnp.int32), cache=gather_cache(cache, cache_batch_axes(model, total),
                                                       rows),
      alive_seqs=seqs, alive_logp=jnp.broadcast_to(first, (batch, beam)),
      alive_node=jnp.zeros((batch, beam), jnp.int32), finished_seqs=seqs,
      finished_scores=jnp.full((batch, beam), NEG_INF), done=jnp.zeros((batch,), bool))
  return _beam_advance_fn(model, prompt, config)(state, logits[rows])


def _beam_finish(model, params, prompt: Prompt, state: BeamState,
                 config: DecodeConfig) -> DecodeOutput:
  prompt_len, beam = prompt.tokens.shape[1], config.beam_size
  advance = _beam_advance_fn(model, prompt, config)
  rows = jnp.repeat(jnp.arange(prompt.tokens.shape[0]), beam)                 # [batch*beam]
  num_real = jnp.sum(prompt.segment_ids != 0, axis=1).astype(jnp.int32)[rows]

  def body(s: BeamState) -> BeamState:
    position = jnp.where(prompt.slot_positions, prompt_len + s.step - 1, num_real + s.step - 1)
    last_token = s.alive_seqs[:, :, prompt_len + s.step - 1].reshape(-1)
    step_logits, cache = step(model, params, s.cache, last_token, position)
    return advance(s.replace(cache=cache), step_logits)

  state = jax.lax.while_loop(
      lambda s: (s.step < config.max_new_tokens) & ~jnp.all(s.done), body, state)
  # A row with no finished hypothesis (everything blocked) falls back to its alive beams.
  found = jnp.isfinite(state.finished_scores[:, :1])
  beams = jnp.where(found[:, :, None], state.finished_seqs, state.alive_seqs)
  scores = jnp.where(found, state.finished_scores, state.alive_logp)
  ended = jnp.any(beams[:, 0, prompt_len:] == prompt.eos_id, axis=-1)
  return DecodeOutput(sequences=beams[:, 0], num_generated=state.step, done=ended,
                      scores=scores[:, 0], beams=beams, beam_scores=scores), state


def _beam_advance_fn(model, prompt: Prompt, config: DecodeConfig):
  prompt_len = prompt.tokens.shape[1]
  real = jnp.repeat(_real_slots(prompt.segment_ids, config.max_new_tokens), config.beam_size,
                    axis=0)
  return functools.partial(_beam_advance, config=config, prompt_len=prompt_len, real=real,
                           eos_id=prompt.eos_id, trie=prompt.trie,
                           axes=cache_batch_axes(model, prompt_len + config.max_new_tokens))


# ----------------------------------------------------------------------------- entry points


def decoding_layout(model: nn.Module, params: Any) -> tuple[nn.Module, Any]:
  """The model and params the decoding program runs: where the layer stack is fully unrolled
  anyway (CPU, `scan_unroll` auto), a scanned `Kosmos` is decoded with its layers unscanned,
  so that the per-token loop neither re-slices every layer's weights out of the stacked arrays
  nor restacks the whole KV cache at every token; on CPU a tied output table is also stored
  transposed (`_output_table_transposed_on_cpu`). Same function, same results; elsewhere (or
  for other modules) unchanged. `decode` applies it inside its program (a copy of the layer
  weights per call); callers that decode many times with the same params (`Runner`, the
  HF-compatible wrapper) apply it once and pass the result."""
  config = getattr(model, "config", None)
  if not isinstance(model, Kosmos):
    return model, params
  n = config.text.num_layers
  if (config.scan_layers and layers_lib.resolve_unroll(config.scan_unroll, n) >= n
      and param_layout.is_scanned(params)):
    model = Kosmos(dataclasses.replace(config, scan_layers=False))
    params = param_layout.unstack_layers(params)
  return _output_table_transposed_on_cpu(model, params)


def _output_table_transposed_on_cpu(model: Kosmos, params: Any) -> tuple[Kosmos, Any]:
  """A tied output layer as an untied `lm_head` holding the table transposed, [embed, vocab],
  when the params are concrete arrays on CPU: XLA:CPU's few-row product `x @ table^T` reads
  the table against its layout (batch 8: 552 vs 382 us per token for an 8000 x 256 table), a
  plain `x @ kernel` does not. Same function; costs one more copy of the table in memory
  (docs/performance.md, "Decoding"). Inside a traced program, or on accelerators: unchanged."""
  config = model.config
  table = params.get("text", {}).get("embed_tokens", {}).get("embedding")
  if (not config.text.tie_word_embeddings or not isinstance(table, jax.Array)
      or isinstance(table, jax.core.Tracer)
      or {device.platform for device in table.devices()} != {"cpu"}):
    return model, params
  text = dict(params["text"], lm_head={"kernel": jax.jit(jnp.transpose)(table)})
  untied = dataclasses.replace(config.text, tie_word_embeddings=False)
  return Kosmos(dataclasses.replace(config, text=untied)), dict(params, text=text)


def _decoding_setup(model, params, prompt: Prompt, config: DecodeConfig):
  """What both programs of a call start from: the decoding layout, the traced knobs, and the
  prompt's default segment ids (all real) and positions (skipping padding)."""
  config = dataclasses.replace(config, **prompt.knobs)
  model, params = decoding_layout(model, params)
  segment_ids = (jnp.ones_like(prompt.tokens) if prompt.segment_ids is None
                 else prompt.segment_ids)
  positions = padded_positions(segment_ids) if prompt.positions is None else prompt.positions
  return model, params, prompt.replace(segment_ids=segment_ids, positions=positions), config


def _start(model, params, prompt: Prompt, *, config: DecodeConfig):
  """Program 2: prefill (images too unless already encoded), first token -> the loop's
  initial state."""
  model, params, prompt, config = _decoding_setup(model, params, prompt, config)
  start = _beam_start if config.strategy == "beam" else _greedy_start
  return start(model, params, prompt, config)


def _finish(model, params, prompt: Prompt, state, *, config: DecodeConfig
            ) -> tuple[DecodeOutput, Any]:
  """Program 3: the per-token loop from `_start`'s state -> (output, final state). The state
  is returned so that the donated input state (the KV cache above all) is updated in place,
  its buffers aliasing the output's, instead of being copied into the loop."""
  model, params, prompt, config = _decoding_setup(model, params, prompt, config)
  finish = _beam_finish if config.strategy == "beam" else _greedy_finish
  return finish(model, params, prompt, state, config)


def _encode_images(model, params, images):
  """Program 1 (a `Kosmos` with images): vision tower + resampler -> image embeddings."""
  model, params = decoding_layout(model, params)
  return model.apply({"params": params}, images, method="encode_images")


@functools.lru_cache(maxsize=None)
def _programs(image_options: Optional[tuple[tuple[str, Any], ...]],
              prompt_options: Optional[tuple[tuple[str, Any], ...]],
              loop_options: Optional[tuple[tuple[str, Any], ...]]):
  """The jitted programs of a call: images, prompt + first token, then the loop. They are
  compiled separately because their best XLA:CPU settings differ: the vision tower's and a
  long prompt's GEMMs run fastest through oneDNN, the loop's few-row products (and a short
  prompt's) through XLA's default kernels (`xla_cpu.compiler_options`, docs/performance.md)."""
  static = ("model", "config")
  as_dict = lambda options: None if options is None else dict(options)
  encode = jax.jit(_encode_images, static_argnames=("model",),
                   compiler_options=as_dict(image_options))
  start = jax.jit(_start, static_argnames=static, compiler_options=as_dict(prompt_options))
  finish = jax.jit(_finish, static_argnames=static, donate_argnames=("state",),
                   compiler_options=as_dict(loop_options))
  return encode, start, finish


def _generate(model, params, prompt: Prompt, *, config: DecodeConfig) -> DecodeOutput:
  """Runs the programs in turn, dispatched without waiting; `config` holds the static fields
  (strategy, lengths, beam size, n-gram size), `prompt` the traced ones."""
  leaves = jax.tree_util.tree_leaves(params)
  devices = (leaves[0].devices() if leaves and isinstance(leaves[0], jax.Array)
             else jax.devices())

  def options(program):                          # hashable, for `_programs`' cache
    chosen = xla_cpu.compiler_options(devices, program=program)
    return None if chosen is None else tuple(sorted(chosen.items()))
  prefill_options, loop_options = options("prefill"), options("decode")
  large_prompt = prompt.tokens.size >= xla_cpu.PREFILL_MIN_ROWS
  encode, start, finish = _programs(prefill_options,
                                    prefill_options if large_prompt else loop_options,
                                    loop_options)
  if prompt.images is not None and isinstance(model, Kosmos):
    prompt = prompt.replace(images=None, image_embeds=encode(model, params, prompt.images))
  state = start(model, params, prompt, config=config)
  output, _ = finish(model, params, prompt, state, config=config)
  return output


def _int32(value):
  """`value` as int32 without an eager device op when it already is an int32 array (each eager
  op costs a dispatch, which adds up to milliseconds per decoding call)."""
  if isinstance(value, jax.Array) and value.dtype == jnp.int32:
    return value
  return np.asarray(value, np.int32)


def check_prompt_inputs(tokens, segment_ids, positions, images, image_token_mask):
  """Validates the prompt arguments and makes the integer ones int32; None stays None."""
  tokens = _int32(tokens)
  if tokens.ndim != 2:
    raise ValueError(f"tokens must be [batch, prompt_len], got shape {tokens.shape}")
  if (images is None) != (image_token_mask is None):
    raise ValueError("pass images and image_token_mask together (or neither)")
  for name, value in (("segment_ids", segment_ids), ("positions", positions),
                      ("image_token_mask", image_token_mask)):
    if value is not None and tuple(np.shape(value)) != tuple(tokens.shape):
      raise ValueError(f"{name} has shape {np.shape(value)}; tokens has {tokens.shape}")
  convert = lambda value: None if value is None else _int32(value)
  return tokens, convert(segment_ids), convert(positions), images, convert(image_token_mask)


def prompt_inputs(tokens, segment_ids, positions, images, image_token_mask):
  """`check_prompt_inputs` with the defaults filled in: segment ids all real, positions that
  skip padding (as in training)."""
  tokens, segment_ids, positions, images, mask = check_prompt_inputs(
      tokens, segment_ids, positions, images, image_token_mask)
  segment_ids = jnp.ones_like(tokens) if segment_ids is None else jnp.asarray(segment_ids)
  positions = padded_positions(segment_ids) if positions is None else jnp.asarray(positions)
  return jnp.asarray(tokens), segment_ids, positions, images, mask


def decode(model: nn.Module, params: Any, tokens: Array, config: DecodeConfig, *,
           images: Optional[Array] = None, image_token_mask: Optional[Array] = None,
           segment_ids: Optional[Array] = None, positions: Optional[Array] = None,
           constraint: Optional[PrefixTrie] = None, rng: Optional[Array] = None
           ) -> DecodeOutput:
  """Decodes a batch of prompts with `config`; one compiled program per shape and config.

  Args:
    model: a `Kosmos` module (any linen module with the same call signature and a KV cache).
    params: its parameters (may be sharded; the computation follows them).
    tokens: [batch, prompt_len] int prompts, left-padded (the last column must be real).
    config: a `DecodeConfig`.
    images: [batch, num_images, H, W, 3] for the prompt (uint8, or float already normalised);
      the k-th placeholder run of a row takes image k.
    image_token_mask: [batch, prompt_len], 1 at image placeholder positions.
    segment_ids: [batch, prompt_len], 0 = padding, 1 = real (default: all real).
    positions: [batch, prompt_len] prompt positions (default: skip padding, as in training).
    constraint: restricts every row's output to one of the trie's candidates (greedy or beam).
    rng: a `jax.random.key`, required by strategy "sample" (same key, same draws).
  Returns:
    DecodeOutput; `sequences[:, :prompt_len + num_generated]` is what HF `generate` returns.
  """
  config.validate()
  if config.strategy == "sample" and rng is None:
    raise ValueError("strategy='sample' needs rng=jax.random.key(seed)")
  if constraint is not None:
    if config.strategy == "sample":
      raise ValueError("constraint works with strategy 'greedy' or 'beam', not 'sample'")
    if config.eos_id != constraint.eos_id:
      raise ValueError(f"the constraint was built with eos_id={constraint.eos_id} but "
                       f"config.eos_id={config.eos_id}; build it with the decoding eos id")
    vocab = getattr(getattr(getattr(model, "config", None), "text", None), "vocab_size", None)
    if vocab is not None and int(jnp.max(constraint.token)) >= vocab:
      raise ValueError(f"a constraint candidate has token id {int(jnp.max(constraint.token))} "
                       f">= vocab_size {vocab}")
  if config.strategy != "sample":
    rng = None                                   # unused; keeps one program per config
  tokens, segment_ids, positions, images, mask = check_prompt_inputs(
      tokens, segment_ids, positions, images, image_token_mask)
  # Numbers that do not change the program's shape are traced: changing them does not recompile.
  knobs = {name: np.float32(getattr(config, name)) for name in _TRACED_FLOATS}
  knobs["top_k"] = np.int32(config.top_k)
  static = dataclasses.replace(DecodeConfig(), strategy=config.strategy,
                               max_new_tokens=config.max_new_tokens, beam_size=config.beam_size,
                               no_repeat_ngram_size=config.no_repeat_ngram_size)
  prompt = Prompt(tokens=tokens, segment_ids=segment_ids, positions=positions, images=images,
                  image_token_mask=mask,
                  eos_id=np.int32(-1 if config.eos_id is None else config.eos_id),
                  pad_id=np.int32(config.pad_id),
                  slot_positions=np.bool_(config.position_mode == "slot"), rng=rng,
                  trie=constraint, knobs=knobs)
  return _generate(model, params, prompt, config=static)
