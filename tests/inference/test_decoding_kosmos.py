"""Beam search, constrained decoding and continuation scoring on the tiny Kosmos model.

Prompts carry two images each and are left-padded by different amounts. Every number is checked
against log-likelihoods from one full (uncached) forward pass of prompt + output, so a beam
whose KV cache was not reordered by parent, or a misplaced position, shows up as a wrong score.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kosmos_jax.inference import decoding
from kosmos_jax.inference import scoring
from tests.helpers import tiny
from kosmos_jax.models import decoder
from kosmos_jax.models import kosmos

PROMPT, NEW, PAD, EOS = 24, 6, 1, 2
LEFT_PADS = (0, 3)
# Class-name-like candidates: shared prefixes, one is a prefix of another; ids avoid pad/eos.
CANDIDATES = [[17, 40], [17, 40, 99], [17, 8, 8, 30], [123], [200, 5], [64, 64, 64]]


def spread(tree):
  """Smaller token embeddings, larger kernels: a random model whose outputs vary."""
  if not isinstance(tree, dict):
    return tree
  return {k: v * 0.1 if k == "embedding" else v * 3.0 if k == "kernel" else spread(v)
          for k, v in tree.items()}


@functools.lru_cache(maxsize=None)
def setup():
  config = tiny.tiny_config()
  params = spread(jax.jit(lambda r: kosmos.init_params(config, r))(jax.random.key(0)))
  model = kosmos.Kosmos(config)
  q = config.num_image_tokens
  rows = []
  for row, pad in enumerate(LEFT_PADS):
    real = tiny.image_block_batch(config, 1, PROMPT - pad, [[1, q + 3]], seed=row + 1,
                                     vocab_low=3)
    rows.append({k: v if k == "images" else np.pad(v, ((0, 0), (pad, 0)))
                 for k, v in real.items()})
  batch = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
  batch["tokens"] = np.where(batch["segment_ids"] == 0, PAD, batch["tokens"])
  assert batch["images"].shape[1] == 2 and batch["image_token_mask"].sum(1).tolist() == [2 * q] * 2
  forward = jax.jit(lambda p, **kw: model.apply({"params": p}, **kw))
  return config, params, model, batch, forward


def full_forward_logprob(continuations):
  """Sum of log-probs of continuations[row] (<= NEW tokens) after each prompt, one forward."""
  _, params, _, batch, forward = setup()
  n = len(LEFT_PADS)
  tokens = np.full((n, PROMPT + NEW), PAD, np.int32)
  segments = np.zeros((n, PROMPT + NEW), np.int32)
  tokens[:, :PROMPT], segments[:, :PROMPT] = batch["tokens"], batch["segment_ids"]
  for row, cont in enumerate(continuations):
    tokens[row, PROMPT:PROMPT + len(cont)] = cont
    segments[row, PROMPT:PROMPT + len(cont)] = 1
  mask = np.pad(batch["image_token_mask"], ((0, 0), (0, NEW)))
  logits = forward(params, tokens=tokens, segment_ids=segments, images=batch["images"],
                   image_token_mask=mask,
                   positions=decoder.padded_positions(jnp.asarray(segments)))
  logp = np.asarray(jax.nn.log_softmax(logits))
  return np.array([sum(logp[row, PROMPT - 1 + t, tok] for t, tok in enumerate(cont))
                   for row, cont in enumerate(continuations)])


def run(config, **kw):
  _, params, model, batch, _ = setup()
  return decoding.decode(model, params, batch["tokens"], config, images=batch["images"],
                         image_token_mask=batch["image_token_mask"],
                         segment_ids=batch["segment_ids"], **kw)


def generated(row_tokens, eos=EOS):
  """New tokens up to and including the first eos."""
  row = list(np.asarray(row_tokens)[PROMPT:])
  return row[:row.index(eos) + 1] if eos in row else row


def test_beam_one_equals_greedy_with_two_images_and_padding():
  greedy = run(decoding.DecodeConfig(max_new_tokens=NEW, eos_id=None, pad_id=PAD))
  new = np.asarray(greedy.sequences)[:, PROMPT:]
  assert len(np.unique(new)) > 4                               # not a degenerate repeat
  np.testing.assert_allclose(greedy.scores, full_forward_logprob(new), rtol=1e-4)
  eos = int(new[0, 2])                                         # stops row 0 after 3 tokens
  for eos_id in (None, eos):
    common = dict(max_new_tokens=NEW, eos_id=eos_id, pad_id=PAD)
    want = run(decoding.DecodeConfig(**common))
    got = run(decoding.DecodeConfig(strategy="beam", beam_size=1, length_penalty=0.0, **common))
    np.testing.assert_array_equal(got.sequences, want.sequences)
    np.testing.assert_array_equal(got.done, want.done)
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5)
  assert len(generated(got.sequences[0], eos)) <= 3 and bool(got.done[0])


def test_constrained_beam_search_ranks_every_candidate_by_its_exact_score():
  """Six beams over six candidates: nothing is pruned, so the beams must be exactly the
  candidates (plus eos), ordered by full-forward log-likelihood / length."""
  trie = decoding.PrefixTrie.from_candidates(CANDIDATES, EOS)
  out = run(decoding.DecodeConfig(strategy="beam", beam_size=len(CANDIDATES), length_penalty=1.0,
                                  max_new_tokens=NEW, eos_id=EOS, pad_id=PAD), constraint=trie)
  assert np.asarray(out.done).all()
  beams, scores = np.asarray(out.beams), np.asarray(out.beam_scores)
  for row in range(len(LEFT_PADS)):
    outputs = [generated(b) for b in beams[row]]
    assert sorted(map(tuple, outputs)) == sorted(tuple(c + [EOS]) for c in CANDIDATES)
    exact = [full_forward_logprob([o] * len(LEFT_PADS))[row] / len(o) for o in outputs]
    np.testing.assert_allclose(scores[row], exact, rtol=1e-4)
    assert np.all(np.diff(scores[row]) <= 0)
  np.testing.assert_array_equal(out.sequences, beams[:, 0])


def test_score_continuations_matches_full_forward_pass():
  _, params, model, batch, _ = setup()
  per_row = [[[5, 6, 7], [9], [30, 31, 32, 33, 34, 35]],
             [[200], [7, 7], [44, 45, 46]]]
  flat = [c for row in per_row for c in row]
  tokens, mask = scoring.pad_sequences(flat, PAD, length=NEW)
  tokens, mask = tokens.reshape(2, 3, NEW), mask.reshape(2, 3, NEW)
  kw = dict(images=batch["images"], image_token_mask=batch["image_token_mask"],
            segment_ids=batch["segment_ids"])
  scores = scoring.score_continuations(model, params, batch["tokens"], tokens,
                                        continuation_mask=mask, chunk_size=2, **kw)
  want = np.array([full_forward_logprob([per_row[0][j], per_row[1][j]]) for j in range(3)]).T
  np.testing.assert_allclose(scores.total, want, rtol=1e-4)
  np.testing.assert_array_equal(scores.num_tokens, [[3, 1, 6], [1, 2, 3]])
  np.testing.assert_allclose(scores.mean, want / np.array([[3, 1, 6], [1, 2, 3]]), rtol=1e-4)
  assert np.all(np.asarray(scores.token_logprobs)[mask == 0] == 0)
  # Candidates shared by every row ([candidates, length]) score as the per-row broadcast.
  shared = scoring.score_continuations(model, params, batch["tokens"], tokens[0],
                                        continuation_mask=mask[0], chunk_size=2, **kw)
  np.testing.assert_allclose(shared.total[0], scores.total[0], rtol=1e-5)
  np.testing.assert_allclose(shared.total[1], [full_forward_logprob([c, c])[1]
                                               for c in per_row[0]], rtol=1e-4)
  with pytest.raises(ValueError, match="continuation_mask has shape"):
    scoring.score_continuations(model, params, batch["tokens"], tokens, continuation_mask=mask[0])
