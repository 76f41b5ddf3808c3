"""Search algorithms of `decoding.decode` on a hand-built model whose answers are known exactly.

`TrigramLM` gives next-token logits from a table indexed by the previous two tokens and keeps
each row's last token in its KV-cache stand-in, so beam search only scores hypotheses right if it
reorders that cache by beam parent. Exhaustive enumeration of every output then gives the exact
best sequences to compare beam search with; a hand-set table makes greedy miss the best one.
"""
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kosmos_jax.inference import decoding

V, PAD, EOS = 5, 0, 1
PROMPTS = np.array([[2, 3], [4, 4]], np.int32)


class TrigramLM(nn.Module):
  """logits[t] = table[token[t-1], token[t]] (token[-1] = 0 at the start of the prompt).

  Decode mode: the cache holds each row's last token (batch axis 0) and a call counter (no batch
  axis), as the real cache holds keys (batched) and an index (not batched).
  """
  vocab: int

  @nn.compact
  def __call__(self, tokens, segment_ids=None, positions=None, decode=False):
    table = self.param("table", nn.initializers.zeros, (self.vocab,) * 3)
    initialized = self.has_variable("cache", "last")
    last = self.variable("cache", "last", jnp.zeros, tokens.shape[:1], jnp.int32)
    calls = self.variable("cache", "calls", lambda: jnp.array(0, jnp.int32))
    before = last.value if decode and initialized else jnp.zeros(tokens.shape[:1], jnp.int32)
    if decode and initialized:
      last.value = tokens[:, -1]
      calls.value = calls.value + 1
    context = jnp.concatenate([before[:, None], tokens[:, :-1]], axis=1)
    return table[context, tokens]                                   # [batch, length, vocab]


MODEL = TrigramLM(V)


def log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def random_table(seed, scale=2.0):
  return np.random.RandomState(seed).randn(V, V, V).astype(np.float32) * scale


def sequence_logprob(table, prompt, generated):
  logp, row = 0.0, [0] + list(prompt)
  for token in generated:
    logp += log_softmax(table[row[-2], row[-1]])[token]
    row.append(token)
  return logp


def exhaustive(table, prompt, max_new, alpha):
  """Every output (ends at the first eos, or at max_new tokens) with its beam score, best first."""
  scored = []
  for length in range(1, max_new + 1):
    for seq in itertools.product(range(V), repeat=length):
      if EOS in seq[:-1] or (length < max_new and seq[-1] != EOS):
        continue
      scored.append((sequence_logprob(table, prompt, seq) / length ** alpha, seq))
  return sorted(scored, key=lambda x: -x[0])


def run(table, config, prompts=PROMPTS, **kw):
  return decoding.decode(MODEL, {"table": jnp.asarray(table)}, prompts, config, **kw)


def new_tokens(sequences, prompt_len=PROMPTS.shape[1]):
  """Generated tokens of each row up to and including eos."""
  out = []
  for row in np.asarray(sequences)[..., prompt_len:].reshape(-1, np.shape(sequences)[-1] -
                                                             prompt_len):
    row = list(row)
    out.append(tuple(row[:row.index(EOS) + 1] if EOS in row else row))
  return out


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.5])
def test_full_width_beam_search_equals_exhaustive_search(alpha):
  """With 20 beams nothing is pruned for 3 new tokens over 4 non-eos tokens (at most 4 * 5
  candidates per beam step before the last), so the beams must be exactly the 20 best outputs of
  exhaustive search, for any length penalty."""
  max_new, beam = 3, 20
  for seed in range(3):
    table = random_table(seed)
    out = run(table, decoding.DecodeConfig(strategy="beam", beam_size=beam, eos_id=EOS,
                                           pad_id=PAD, max_new_tokens=max_new,
                                           length_penalty=alpha))
    for row, prompt in enumerate(PROMPTS):
      best = exhaustive(table, prompt, max_new, alpha)[:beam]
      np.testing.assert_allclose(np.asarray(out.beam_scores)[row], [s for s, _ in best],
                                 rtol=1e-5)
      got = new_tokens(np.asarray(out.beams)[row])
      assert got[0] == best[0][1]
      assert {g for g, (s, _) in zip(got, best) if s > best[-1][0] + 1e-4} == \
             {q for s, q in best if s > best[-1][0] + 1e-4}          # same set, ties aside


def test_beam_search_finds_the_sequence_greedy_misses():
  """First token: A (p=.5) or B (p=.4). After A every next token is equally likely (p=.25), after
  B eos is nearly certain: the best output is "B </s>" (.4 vs .125 for any "A x")."""
  a, b = 2, 3
  probs = np.full((V, V, V), 1.0 / V)
  probs[0, a] = [0.01, 0.09, 0.5, 0.4, 0.0]              # after the prompt [a]
  probs[a, a] = [0.0, 0.25, 0.25, 0.25, 0.25]
  probs[a, b] = [0.0, 0.98, 0.01, 0.01, 0.0]
  table = np.log(np.maximum(probs, 1e-9)).astype(np.float32)
  prompt = np.array([[a]], np.int32)
  common = dict(eos_id=EOS, pad_id=PAD, max_new_tokens=2)
  greedy = run(table, decoding.DecodeConfig(**common), prompts=prompt)
  beam = run(table, decoding.DecodeConfig(strategy="beam", beam_size=2, length_penalty=0.0,
                                          **common), prompts=prompt)
  assert new_tokens(greedy.sequences, 1)[0][0] == a
  assert new_tokens(beam.sequences, 1)[0] == (b, EOS)
  np.testing.assert_allclose(float(beam.scores[0]), np.log(0.4 * 0.98), rtol=1e-5)
  assert float(beam.scores[0]) > float(greedy.scores[0])
  assert bool(beam.done[0]) and int(beam.num_generated) == 2


def test_beam_search_does_not_stop_before_a_longer_hypothesis_can_win():
  """One beam, mean log-prob (alpha 1): "</s>" (p=.6, score -0.51) finishes first; "B C C </s>"
  (.2 * .98^3, score -0.42) is better but only at length 4, when the alive "B" (-1.61) already
  looks worse than the finished one at length 2 (-0.80). Early stopping must wait for it."""
  a, b, c = 2, 3, 4
  probs = np.full((V, V, V), 1.0 / V)
  probs[0, a] = [0.0, 0.6, 0.05, 0.2, 0.15]
  probs[a, b] = [0.0, 0.01, 0.005, 0.005, 0.98]
  probs[b, c] = [0.0, 0.01, 0.005, 0.005, 0.98]
  probs[c, c] = [0.0, 0.98, 0.01, 0.005, 0.005]
  table = np.log(np.maximum(probs, 1e-9)).astype(np.float32)
  prompt = np.array([[a]], np.int32)
  common = dict(eos_id=EOS, pad_id=PAD, max_new_tokens=5)
  best = exhaustive(table, [a], 5, 1.0)[0]
  assert best[1] == (b, c, c, EOS)
  assert new_tokens(run(table, decoding.DecodeConfig(**common), prompts=prompt).sequences,
                    1)[0] == (EOS,)
  out = run(table, decoding.DecodeConfig(strategy="beam", beam_size=1, length_penalty=1.0,
                                         **common), prompts=prompt)
  assert new_tokens(out.sequences, 1)[0] == best[1]
  np.testing.assert_allclose(float(out.scores[0]), best[0], rtol=1e-5)


def test_early_stopping_with_a_brevity_bonus_is_exact():
  """Two beams, alpha -1 (score = log-prob * length). After step 2 the finished set is full
  ("</s>" -1.20, "C </s>" -2.98) and the alive "B A" (-0.85) can still finish at length 3 with
  -0.85 * 3 > -2.98: it does ("B A </s>", -2.70), so the search must not stop at step 2."""
  a, b, c = 2, 3, 4
  probs = np.full((V, V, V), 1.0 / V)
  probs[0, a] = [0.0, 0.3, 0.0, 0.45, 0.25]
  probs[a, b] = [0.0, 0.01, 0.95, 0.02, 0.02]
  probs[a, c] = [0.0, 0.9, 0.04, 0.03, 0.03]
  probs[b, a] = [0.0, 0.95, 0.02, 0.02, 0.01]
  table = np.log(np.maximum(probs, 1e-9)).astype(np.float32)
  out = run(table, decoding.DecodeConfig(strategy="beam", beam_size=2, length_penalty=-1.0,
                                         eos_id=EOS, pad_id=PAD, max_new_tokens=5),
            prompts=np.array([[a]], np.int32))
  best = exhaustive(table, [a], 5, -1.0)[:2]
  assert [q for _, q in best] == [(EOS,), (b, a, EOS)]
  assert new_tokens(out.beams[0], 1) == [q for _, q in best]
  np.testing.assert_allclose(out.beam_scores[0], [s for s, _ in best], rtol=1e-5)


def test_beam_one_equals_greedy():
  """Without a length bonus a single beam is greedy search, eos included."""
  for seed in range(3):
    table = random_table(seed + 10)
    common = dict(eos_id=EOS, pad_id=PAD, max_new_tokens=6)
    greedy = run(table, decoding.DecodeConfig(**common))
    beam = run(table, decoding.DecodeConfig(strategy="beam", beam_size=1, length_penalty=0.0,
                                            **common))
    np.testing.assert_array_equal(beam.sequences, greedy.sequences)
    np.testing.assert_allclose(beam.scores, greedy.scores, rtol=1e-5)


def hf_banned_tokens(row, n):
  """HF NoRepeatNGramLogitsProcessor for one row, written out: tokens that would repeat an
  n-gram of `row`."""
  if len(row) + 1 < n:
    return set()
  seen = {}
  for i in range(len(row) - n + 1):
    gram = tuple(row[i:i + n])
    seen.setdefault(gram[:-1], set()).add(gram[-1])
  return seen.get(tuple(row[len(row) - n + 1:]) if n > 1 else (), set())


@pytest.mark.parametrize("n", [1, 2, 3])
def test_no_repeat_ngram_mask_matches_hf_rule(n):
  rng = np.random.RandomState(n)
  rows, slots, vocab = 6, 12, 4                     # small vocab: many repeated n-grams
  sequences = rng.randint(0, vocab, (rows, slots)).astype(np.int32)
  real = np.ones((rows, slots), bool)
  real[3:, :2] = False                              # left padding is not part of any n-gram
  for length in (n - 1, 5, slots):
    mask = np.asarray(decoding.no_repeat_ngram_mask(jnp.asarray(sequences), jnp.asarray(real),
                                                    jnp.asarray(length), n, vocab))
    for r in range(rows):
      start = int(np.argmax(real[r]))
      want = hf_banned_tokens(list(sequences[r, start:length]), n)
      assert set(np.flatnonzero(mask[r])) == want, (r, length)


def repeats(tokens, n):
  grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
  return len(grams) != len(set(grams))


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_no_repeat_ngram_decoding_never_repeats(strategy):
  """A table that loves the cycle 2 3 4 2 3 4 ...: unblocked output repeats bigrams, blocked
  output (prompt included) never does."""
  table = random_table(7, scale=0.3)
  for x, y in [(2, 3), (3, 4), (4, 2)]:
    table[:, x, y] += 4.0
  table[:, :, EOS] -= 10.0
  common = dict(strategy=strategy, beam_size=3, eos_id=EOS, pad_id=PAD, max_new_tokens=10)
  free = run(table, decoding.DecodeConfig(**common))
  assert all(repeats(list(row), 2) for row in np.asarray(free.sequences))
  blocked = run(table, decoding.DecodeConfig(no_repeat_ngram_size=2, **common))
  for row in np.asarray(blocked.sequences):
    row = list(row)
    assert not repeats(row[:row.index(EOS) + 1] if EOS in row[2:] else row, 2), row


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_constrained_decoding_only_emits_candidates(strategy):
  table = random_table(3)
  candidates = [(4, 4, 2), (4, 3), (2,), (3, 3, 3, 3)]
  trie = decoding.PrefixTrie.from_candidates(candidates, EOS)
  common = dict(strategy=strategy, beam_size=3, eos_id=EOS, pad_id=PAD, max_new_tokens=6)
  free = run(table, decoding.DecodeConfig(**common))
  assert not set(new_tokens(free.sequences)) & {c + (EOS,) for c in candidates}
  out = run(table, decoding.DecodeConfig(**common), constraint=trie)
  allowed = {c + (EOS,) for c in candidates}
  outputs = new_tokens(out.beams if strategy == "beam" else out.sequences)
  assert set(outputs) <= allowed and np.asarray(out.done).all()
  if strategy == "beam":                              # the best candidate by exact score
    for row, prompt in enumerate(PROMPTS):
      best = max(allowed, key=lambda c: sequence_logprob(table, prompt, c) / len(c))
      assert outputs[3 * row] == best


def test_sampling_top_k_1_and_low_temperature_equal_greedy_and_draws_are_reproducible():
  table = random_table(5)
  common = dict(eos_id=None, pad_id=PAD, max_new_tokens=8)
  greedy = np.asarray(run(table, decoding.DecodeConfig(**common)).sequences)
  rng = jax.random.key(0)
  for kw in (dict(top_k=1), dict(temperature=1e-4), dict(top_p=1e-6)):
    out = run(table, decoding.DecodeConfig(strategy="sample", **kw, **common), rng=rng)
    np.testing.assert_array_equal(out.sequences, greedy, err_msg=str(kw))
  draws = [np.asarray(run(table, decoding.DecodeConfig(strategy="sample", **common),
                          rng=jax.random.key(s)).sequences) for s in (1, 1, 2)]
  np.testing.assert_array_equal(draws[0], draws[1])
  assert not np.array_equal(draws[0], draws[2])


@pytest.mark.parametrize("kw", [dict(temperature=0.7), dict(top_k=3), dict(top_p=0.7),
                                dict(temperature=2.0, top_k=4, top_p=0.9)])
def test_sampling_frequencies_match_the_filtered_distribution(kw):
  """4,000 one-token draws from the same context against the exact filtered distribution."""
  logits = np.array([1.0, 0.2, 2.0, -1.0, 1.5], np.float32)
  table = np.zeros((V, V, V), np.float32)
  table[2, 3] = logits
  rows = 4000
  out = run(table, decoding.DecodeConfig(strategy="sample", eos_id=None, pad_id=PAD,
                                         max_new_tokens=1, **kw),
            prompts=np.tile(PROMPTS[:1], (rows, 1)), rng=jax.random.key(3))
  freq = np.bincount(np.asarray(out.sequences)[:, -1], minlength=V) / rows
  probs = np.exp(log_softmax(logits / kw.get("temperature", 1.0)))
  order = np.argsort(-probs)
  keep = np.zeros(V, bool)
  keep[order[:kw.get("top_k", V)]] = True                       # top-k, then top-p (HF order)
  renorm = np.where(keep, probs, 0)[order] / probs[keep].sum()
  keep[order[np.cumsum(renorm) - renorm >= kw.get("top_p", 1.0)]] = False
  want = np.where(keep, probs, 0) / probs[keep].sum()
  assert np.all(freq[~keep] == 0)
  np.testing.assert_allclose(freq, want, atol=4 * np.sqrt(0.25 / rows))


def test_bad_arguments_raise_with_a_fix():
  table = random_table(0)
  with pytest.raises(ValueError, match="rng"):
    run(table, decoding.DecodeConfig(strategy="sample"))
  with pytest.raises(ValueError, match="beam_size.*temperature"):
    run(table, decoding.DecodeConfig(beam_size=0, temperature=0.0))
  with pytest.raises(ValueError, match="eos_id"):
    run(table, decoding.DecodeConfig(eos_id=2), constraint=decoding.PrefixTrie.from_candidates(
        [[3]], EOS))
  with pytest.raises(ValueError, match="before its end"):
    decoding.PrefixTrie.from_candidates([[3, EOS, 4]], EOS)
  with pytest.raises(ValueError, match="images and image_token_mask"):
    run(table, decoding.DecodeConfig(), images=np.zeros((2, 1, 4, 4, 3), np.uint8))
