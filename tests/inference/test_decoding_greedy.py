"""Greedy decoding with the KV cache in one jitted while_loop == argmax over full forward passes.

Both position schemes: the `tiny` preset (xPos) and the Kosmos-2 / HF scheme (fairseq
sinusoidal, no xPos). Prompts are left-padded by different amounts and carry an image.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kosmos_jax.inference import decoding
from tests.helpers import tiny
from kosmos_jax.models import decoder
from kosmos_jax.models import kosmos
from kosmos_jax.training import xla_cpu

SCHEMES = {"xpos": {}, "sinusoidal": tiny.SINUSOIDAL}
PROMPT, NEW, PAD_ID = 14, 10, 1
LEFT_PADS = (0, 3)


def spread(tree):
  """Smaller token embeddings, larger kernels: a random model whose greedy output varies
  (at init the tied embedding makes it repeat its last token)."""
  if not isinstance(tree, dict):
    return tree
  out = {}
  for key, value in tree.items():
    if key == "embedding":
      out[key] = value * 0.1
    elif key == "kernel":
      out[key] = value * 3.0
    else:
      out[key] = spread(value)
  return out


@functools.lru_cache(maxsize=None)
def setup(scheme):
  config = tiny.tiny_config(**{k.replace(".", "__"): v for k, v in SCHEMES[scheme].items()})
  params = spread(jax.jit(lambda r: kosmos.init_params(config, r))(jax.random.key(0)))
  model = kosmos.Kosmos(config)
  forward = jax.jit(lambda p, **kw: model.apply({"params": p}, **kw))
  return config, params, model, forward


def prompts(config, pads=LEFT_PADS, seeds=(1, 2)):
  """Two prompts (an image block at real position 1), row i left-padded by pads[i]."""
  rows = []
  for pad, seed in zip(pads, seeds):
    real = tiny.image_block_batch(config, 1, PROMPT - pad, [[1]], seed=seed)
    rows.append({k: v if k == "images" else np.pad(v, ((0, 0), (pad, 0)))
                 for k, v in real.items()})
  batch = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
  batch["tokens"] = np.where(batch["segment_ids"] == 0, PAD_ID, batch["tokens"])
  return batch


def reference(scheme, batch, position_mode="skip_padding"):
  """Argmax over repeated full (uncached) forward passes of the growing sequence.

  The sequence lives in a fixed [batch, PROMPT + NEW] buffer whose not-yet-generated slots are
  padding (segment 0); causal attention makes them invisible, and one compile serves all steps.
  """
  config, params, _, forward = setup(scheme)
  total = PROMPT + NEW
  tokens = np.full((2, total), PAD_ID, np.int32)
  tokens[:, :PROMPT] = batch["tokens"]
  segments = np.zeros((2, total), np.int32)
  segments[:, :PROMPT] = batch["segment_ids"]
  mask = np.zeros((2, total), np.int32)
  mask[:, :PROMPT] = batch["image_token_mask"]
  prompt_pos = np.asarray(decoder.padded_positions(jnp.asarray(batch["segment_ids"])))
  for t in range(NEW):
    if position_mode == "slot":
      positions = np.concatenate([prompt_pos, np.tile(np.arange(PROMPT, total), (2, 1))], 1)
    else:
      positions = np.asarray(decoder.padded_positions(jnp.asarray(segments)))
    logits = forward(params, tokens=tokens, segment_ids=segments, positions=positions,
                     images=batch["images"], image_token_mask=mask)
    tokens[:, PROMPT + t] = np.argmax(np.asarray(logits[:, PROMPT + t - 1]), axis=-1)
    segments[:, PROMPT + t] = 1
  return tokens


def decode(scheme, batch, eos_id=None, position_mode="skip_padding"):
  config, params, model, _ = setup(scheme)
  config = decoding.DecodeConfig(strategy="greedy", max_new_tokens=NEW, eos_id=eos_id,
                                 pad_id=PAD_ID, position_mode=position_mode)
  return decoding.decode(
      model, params, batch["tokens"], config, images=batch["images"],
      image_token_mask=batch["image_token_mask"], segment_ids=batch["segment_ids"])


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_cached_greedy_equals_argmax_of_full_forward(scheme):
  batch = prompts(setup(scheme)[0])
  expected = reference(scheme, batch)
  out = decode(scheme, batch)
  np.testing.assert_array_equal(np.asarray(out.sequences), expected)
  assert int(out.num_generated) == NEW and not np.asarray(out.done).any()
  assert len(np.unique(expected[:, PROMPT:])) > 4       # the check is not on a degenerate repeat

  # eos from row 0 only: row 0 stops there and pads, row 1 runs on (unless it emits eos too).
  new = expected[:, PROMPT:]
  stop0 = next(t for t in range(1, NEW) if new[0, t] not in new[0, :t])
  eos = int(new[0, stop0])
  out = decode(scheme, batch, eos_id=eos)
  stops = [list(row).index(eos) if eos in row else None for row in new]
  for row, stop in enumerate(stops):
    want = new[row] if stop is None else np.where(np.arange(NEW) > stop, PAD_ID, new[row])
    np.testing.assert_array_equal(np.asarray(out.sequences)[row, PROMPT:], want)
  finished = [s for s in stops if s is not None]
  print(f"{scheme}: eos={eos} stops per row={stops}")
  assert int(out.num_generated) == (NEW if None in stops else max(finished) + 1)


def test_slot_positions_equal_argmax_of_full_forward():
  """position_mode="slot" (what HF Kosmos-2 generate does) against the same positions uncached."""
  batch = prompts(setup("sinusoidal")[0])
  expected = reference("sinusoidal", batch, position_mode="slot")
  out = decode("sinusoidal", batch, position_mode="slot")
  np.testing.assert_array_equal(np.asarray(out.sequences), expected)
  assert not np.array_equal(expected, reference("sinusoidal", batch))   # positions matter


def test_loop_ends_when_every_row_has_emitted_eos():
  batch = prompts(setup("xpos")[0], pads=(3, 3), seeds=(5, 5))        # two identical rows
  free = np.asarray(decode("xpos", batch).sequences)
  np.testing.assert_array_equal(free[0], free[1])
  new = free[0, PROMPT:]
  stop = next(t for t in range(2, NEW) if new[t] not in new[:t])       # first occurrence at t
  out = decode("xpos", batch, eos_id=int(new[stop]))                   # same compiled program
  assert int(out.num_generated) == stop + 1 and np.asarray(out.done).all()
  expected = np.concatenate([new[:stop + 1], np.full(NEW - stop - 1, PAD_ID)])
  for row in range(2):
    np.testing.assert_array_equal(np.asarray(out.sequences)[row, PROMPT:], expected)


def test_first_argmax_is_the_lowest_maximal_id():
  logits = np.array([[0.5, 2.0, 2.0, -1.0],            # tie: the lower id, as torch.argmax
                     [-np.inf] * 4,                    # everything blocked
                     [1.0, np.nan, 3.0, 0.0],          # broken logits: a valid id, not vocab
                     [-3.0, -2.0, -7.0, -2.5]], np.float32)
  np.testing.assert_array_equal(np.asarray(decoding.first_argmax(jnp.asarray(logits))),
                                [1, 0, 0, 1])
  random = np.random.RandomState(0).randn(16, 1000).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(decoding.first_argmax(jnp.asarray(random))),
                                np.argmax(random, axis=-1))


def test_decoding_layout_on_cpu_holds_the_tied_table_transposed():
  """`decoding_layout` on CPU params: layers unscanned and the tied output table also stored
  transposed as an untied `lm_head`; decoding with it gives the tokens and scores of the
  tied model as `decode` lays it out inside its program (where params are traced and the
  table stays tied)."""
  config, params, model, _ = setup("xpos")
  laid_model, laid = decoding.decoding_layout(model, params)
  assert config.text.tie_word_embeddings and not laid_model.config.text.tie_word_embeddings
  table = np.asarray(params["text"]["embed_tokens"]["embedding"])
  np.testing.assert_array_equal(np.asarray(laid["text"]["lm_head"]["kernel"]), table.T)
  assert decoding.decoding_layout(laid_model, laid)[0] is laid_model     # applied once only
  batch = prompts(config)
  outputs = [decoding.decode(m, p, batch["tokens"], decoding.DecodeConfig(
      strategy="beam", beam_size=2, max_new_tokens=NEW, eos_id=None, pad_id=PAD_ID),
      images=batch["images"], image_token_mask=batch["image_token_mask"],
      segment_ids=batch["segment_ids"]) for m, p in ((model, params), (laid_model, laid))]
  np.testing.assert_array_equal(np.asarray(outputs[1].sequences),
                                np.asarray(outputs[0].sequences))
  np.testing.assert_allclose(np.asarray(outputs[1].scores), np.asarray(outputs[0].scores),
                             rtol=1e-5)


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_same_output_with_and_without_onednn_prefill(monkeypatch, strategy):
  """The image and prompt programs compiled with the prefill options as configured (oneDNN
  where `xla_cpu.onednn_is_exact` holds on this CPU; the prompt program forced onto them here
  even for this short prompt) give the tokens and scores of XLA's default kernels. (Forcing
  oneDNN where the probe fails makes this test fail.)"""
  monkeypatch.setattr(xla_cpu, "PREFILL_MIN_ROWS", 0)
  _, params, model, _ = setup("xpos")
  batch = prompts(setup("xpos")[0])
  config = decoding.DecodeConfig(strategy=strategy, max_new_tokens=NEW, eos_id=None,
                                 pad_id=PAD_ID, beam_size=2)
  outputs = []
  for setting in ("0", None):
    if setting is None:
      monkeypatch.delenv(xla_cpu.OPT_OUT_ENV, raising=False)
    else:
      monkeypatch.setenv(xla_cpu.OPT_OUT_ENV, setting)
    outputs.append(decoding.decode(model, params, batch["tokens"], config,
                                   images=batch["images"],
                                   image_token_mask=batch["image_token_mask"],
                                   segment_ids=batch["segment_ids"]))
  plain, configured = outputs
  np.testing.assert_array_equal(np.asarray(configured.sequences), np.asarray(plain.sequences))
  np.testing.assert_allclose(np.asarray(configured.scores), np.asarray(plain.scores), rtol=1e-4)


@pytest.mark.parametrize("batch", [1, 3])
def test_decoding_loop_updates_the_kv_cache_in_place(monkeypatch, batch):
  """A loop of one-token steps, compiled with the decoding loop's XLA:CPU options, writes the KV
  cache without copying it: attention reads the cache as it was plus the new key/value, so the
  only user of the updated cache is the next step (a copy of every cache buffer per token cost
  ~0.17 ms of a 0.75 ms batch-1 step)."""
  monkeypatch.delenv(xla_cpu.OPT_OUT_ENV, raising=False)
  config, params, model, _ = setup("xpos")
  model, params = decoding.decoding_layout(model, params)   # as `decode` runs it: layers unrolled
  max_len = 24
  cache = kosmos.init_cache(model, batch, max_len)

  def loop(params, cache, token):
    def body(t, carry):
      cache, token = carry
      logits, cache = decoding.step(model, params, cache, token, jnp.full_like(token, t))
      return cache, jnp.argmax(logits, -1).astype(jnp.int32)
    return jax.lax.fori_loop(0, max_len, body, (cache, token))

  options = xla_cpu.compiler_options(jax.devices("cpu"), program="decode")
  text = jax.jit(loop, donate_argnums=1, compiler_options=options).lower(
      params, cache, jnp.zeros((batch,), jnp.int32)).compile().as_text()
  cache_shapes = {"f32[" + ",".join(map(str, leaf.shape)) + "]"
                  for leaf in jax.tree_util.tree_leaves(cache) if leaf.dtype == jnp.float32}
  assert len(cache_shapes) == 2                 # keys [b, h, d, max], values [b, h, max, d]
  copies = [line.strip()[:120] for line in text.splitlines()
            if " copy(" in line and any(f"= {shape}" in line for shape in cache_shapes)]
  assert not copies, copies
