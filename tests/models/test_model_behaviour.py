"""Behavioural tests of the Kosmos model at tiny size: masking, padding, packing, image splicing,
KV-cache decoding, scan vs unrolled layers, Sub-LN init statistics."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import tiny
from kosmos_jax.models import decoder
from kosmos_jax.models import kosmos
from kosmos_jax.models import param_layout

SCHEMES = {"xpos": {}, "sinusoidal": tiny.SINUSOIDAL}


@functools.lru_cache(maxsize=None)
def setup(scheme: str = "xpos", scan: bool = True):
  config = tiny.tiny_config(scan_layers=scan, **{k.replace(".", "__"): v
                                                    for k, v in SCHEMES[scheme].items()})
  params = jax.jit(lambda r: kosmos.init_params(config, r))(jax.random.key(0))
  model = kosmos.Kosmos(config)
  apply = jax.jit(lambda p, **kw: model.apply({"params": p}, **kw))
  return config, params, model, apply


def logits_of(scheme, **batch):
  _, params, _, apply = setup(scheme)
  return np.asarray(apply(params, **batch))


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_causal_future_token_changes_no_earlier_logit(scheme):
  config = setup(scheme)[0]
  batch = tiny.image_block_batch(config, 2, 24, [[2], [5]])
  base = logits_of(scheme, **batch)
  changed = dict(batch, tokens=batch["tokens"].copy())
  changed["tokens"][:, 18] = (changed["tokens"][:, 18] + 7) % config.text.vocab_size
  after = logits_of(scheme, **changed)
  np.testing.assert_array_equal(base[:, :18], after[:, :18])
  assert np.abs(base[:, 18:] - after[:, 18:]).max() > 1e-3


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_padding_invariance_left_and_right(scheme):
  config = setup(scheme)[0]
  length, pad = 24, 5
  row = tiny.image_block_batch(config, 1, length - pad, [[2]], seed=3)
  expected = logits_of(scheme, **row)[0]

  def padded(left: bool):
    out = {}
    for key, value in row.items():
      if key == "images":
        out[key] = value
        continue
      fill = np.zeros((1, pad), value.dtype)
      out[key] = np.concatenate([fill, value] if left else [value, fill], axis=1)
    return out

  left = logits_of(scheme, **padded(left=True))[0]
  right = logits_of(scheme, **padded(left=False))[0]
  np.testing.assert_allclose(left[pad:], expected, atol=2e-5)
  np.testing.assert_allclose(right[:length - pad], expected, atol=2e-5)


def test_packed_segments_do_not_interact():
  config = setup()[0]
  first = tiny.image_block_batch(config, 1, 12, [[1]], seed=1)
  second = tiny.image_block_batch(config, 1, 12, [[3]], seed=2)
  packed = dict(
      tokens=np.concatenate([first["tokens"], second["tokens"]], 1),
      image_token_mask=np.concatenate([first["image_token_mask"], second["image_token_mask"]], 1),
      images=np.concatenate([first["images"], second["images"]], 1),
      segment_ids=np.concatenate([np.full((1, 12), 1), np.full((1, 12), 2)], 1).astype(np.int32))
  got = logits_of("xpos", **packed)[0]
  np.testing.assert_allclose(got[:12], logits_of("xpos", **first)[0], atol=2e-5)
  np.testing.assert_allclose(got[12:], logits_of("xpos", **second)[0], atol=2e-5)


def test_splice_puts_kth_image_in_kth_run():
  token_embeds = np.zeros((2, 10, 3), np.float32)
  image_embeds = np.arange(2 * 3 * 2 * 3, dtype=np.float32).reshape(2, 3, 2, 3) + 1  # [b, n, q, d]
  mask = np.zeros((2, 10), np.int32)
  mask[0, [1, 2, 5, 6]] = 1          # row 0: two runs -> images 0 and 1
  mask[1, [0, 1, 3, 4, 8, 9]] = 1    # row 1: three runs -> images 0, 1, 2
  out = np.asarray(decoder.splice_image_embeddings(token_embeds, image_embeds, mask))
  np.testing.assert_array_equal(out[0, 1:3], image_embeds[0, 0])
  np.testing.assert_array_equal(out[0, 5:7], image_embeds[0, 1])
  np.testing.assert_array_equal(out[1, 3:5], image_embeds[1, 1])
  np.testing.assert_array_equal(out[1, 8:10], image_embeds[1, 2])
  np.testing.assert_array_equal(out[0, [0, 3, 4, 7, 8, 9]], 0)


def test_changing_an_image_changes_no_logit_before_its_placeholders():
  config = setup()[0]
  q = config.num_image_tokens
  batch = tiny.image_block_batch(config, 1, 40, [[2, 20]], seed=4)
  base = logits_of("xpos", **batch)
  images = batch["images"].copy()
  images[0, 1] = 255 - images[0, 1]                      # change the second image only
  changed = logits_of("xpos", **dict(batch, images=images))
  np.testing.assert_array_equal(base[:, :20], changed[:, :20])
  assert np.abs(base[:, 20:] - changed[:, 20:]).max() > 1e-4
  # Swapping the two images changes logits from the first run on.
  swapped = logits_of("xpos", **dict(batch, images=batch["images"][:, ::-1]))
  np.testing.assert_array_equal(base[:, :2], swapped[:, :2])
  assert np.abs(base[:, 2 + q:20] - swapped[:, 2 + q:20]).max() > 1e-4


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_cached_decoding_equals_full_forward(scheme):
  config, params, model, _ = setup(scheme)
  batch = tiny.image_block_batch(config, 2, 22, [[1], [3]], seed=5)
  batch["segment_ids"][1, :3] = 0               # left-padded second row (image moved after pad)
  batch["image_token_mask"][1] = 0
  batch["image_token_mask"][1, 4:4 + config.num_image_tokens] = 1
  pos = np.asarray(decoder.padded_positions(jnp.asarray(batch["segment_ids"])))
  full = np.asarray(model.apply({"params": params}, **batch, positions=pos))
  prompt = 14
  cache = kosmos.init_cache(kosmos.Kosmos(config), 2, 22)
  step = jax.jit(lambda p, c, **kw: model.apply({"params": p, "cache": c}, decode=True,
                                                mutable=["cache"], **kw))
  out, state = step(params, cache, tokens=batch["tokens"][:, :prompt], images=batch["images"],
                    image_token_mask=batch["image_token_mask"][:, :prompt],
                    segment_ids=batch["segment_ids"][:, :prompt], positions=pos[:, :prompt])
  pieces = [np.asarray(out)]
  for t in range(prompt, 22):
    out, state = step(params, state["cache"], tokens=batch["tokens"][:, t:t + 1],
                      segment_ids=batch["segment_ids"][:, t:t + 1], positions=pos[:, t:t + 1])
    pieces.append(np.asarray(out))
  incremental = np.concatenate(pieces, axis=1)
  real = batch["segment_ids"].astype(bool)
  np.testing.assert_allclose(incremental[real], full[real], atol=1e-5, rtol=1e-5)


def test_scan_and_unrolled_layers_agree():
  config, params, _, apply = setup("xpos", scan=True)
  config_u, _, _, apply_u = setup("xpos", scan=False)
  batch = tiny.image_block_batch(config, 2, 20, [[2], [4]], seed=6)
  unrolled = param_layout.unstack_layers(params)
  np.testing.assert_allclose(np.asarray(apply_u(unrolled, **batch)),
                             np.asarray(apply(params, **batch)), atol=1e-5, rtol=1e-5)
  restacked = param_layout.stack_layers(unrolled)
  assert jax.tree_util.tree_structure(restacked) == jax.tree_util.tree_structure(params)


def test_subln_init_gain_visible_in_parameter_statistics():
  """fc1/fc2/v_proj/out_proj (weights and biases) are U(+-gamma/sqrt(fan_in)), q/k U(+-1/sqrt)."""
  config = tiny.tiny_config(text__embed_dim=128, text__ffn_dim=512, text__num_layers=4)
  params = jax.jit(lambda r: kosmos.init_params(config, r))(jax.random.key(1))["text"]["layers"]
  gamma = math.sqrt(math.log(2 * 4))
  assert config.text.init_gamma == pytest.approx(gamma)
  uniform_std = lambda bound: bound / math.sqrt(3)
  attn = params["self_attn"]
  d, f = 128, 512
  checks = {
      "q_proj": (attn["q_proj"]["kernel"], 1 / math.sqrt(d)),
      "k_proj": (attn["k_proj"]["kernel"], 1 / math.sqrt(d)),
      "v_proj": (attn["v_proj"]["kernel"], gamma / math.sqrt(d)),
      "out_proj": (attn["out_proj"]["kernel"], gamma / math.sqrt(d)),
      "fc1": (params["ffn"]["fc1"]["kernel"], gamma / math.sqrt(d)),
      "fc2": (params["ffn"]["fc2"]["kernel"], gamma / math.sqrt(f)),
      "fc1_bias": (params["ffn"]["fc1"]["bias"], gamma / math.sqrt(d)),
  }
  for name, (value, bound) in checks.items():
    value = np.asarray(value)
    assert np.abs(value).max() <= bound * (1 + 1e-6), name
    assert np.std(value) == pytest.approx(uniform_std(bound), rel=0.05), name
  ratio = np.std(np.asarray(attn["v_proj"]["kernel"])) / np.std(np.asarray(attn["q_proj"]["kernel"]))
  assert ratio == pytest.approx(gamma, rel=0.05)


@pytest.mark.parametrize("tied", [True, False])
def test_hidden_output_reproduces_the_logits(tied):
  """output="hidden" gives the output layer's input and [vocab, embed] weights: their product
  is the logits, for the tied table and for an untied lm_head (same parameters either way)."""
  config = tiny.tiny_config(text__tie_word_embeddings=tied)
  params = kosmos.init_params(config, jax.random.key(1))
  model = kosmos.Kosmos(config)
  batch = tiny.image_block_batch(config, 2, 20, [[2], [4]], seed=3)
  logits = model.apply({"params": params}, **batch)
  hidden, table = model.apply({"params": params}, **batch, output="hidden")
  assert hidden.shape == logits.shape[:2] + (config.text.embed_dim,)
  assert table.shape == (config.text.vocab_size, config.text.embed_dim)
  np.testing.assert_allclose(np.einsum("ble,ve->blv", hidden, table), logits,
                             rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="output='probs'"):
    model.apply({"params": params}, **batch, output="probs")
