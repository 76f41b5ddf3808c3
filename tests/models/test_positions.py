"""xPos and fairseq sinusoidal positions against direct transcriptions of the reference formulas."""
import math

import numpy as np
import pytest

from kosmos_jax.models import positions


def torchscale_xpos_reference(x, offset=0, downscale=False, scale_base=512):
  """numpy transcription of torchscale 0.3.0 XPOS.forward; x: [batch*heads, length, D]."""
  length, dim = x.shape[1], x.shape[2]
  zeta = (np.arange(0, dim, 2) + 0.4 * dim) / (1.4 * dim)                   # [D/2]
  min_pos = -(length + offset) // 2
  max_pos = length + offset + min_pos
  scale = zeta[None, :] ** (np.arange(min_pos, max_pos)[:, None] / scale_base)  # [T, D/2]
  half = scale.shape[1]
  inv_freq = 1.0 / (10000 ** (np.arange(half) / half))
  angle = np.arange(scale.shape[0])[:, None] * inv_freq[None, :]
  sin, cos = np.sin(angle), np.cos(angle)
  scale, sin, cos = scale[-length:], sin[-length:], cos[-length:]
  if downscale:
    scale = 1 / scale
  interleave = lambda m: np.repeat(m * scale, 2, axis=-1)
  rotated = np.stack([-x[:, :, 1::2], x[:, :, 0::2]], axis=-1).reshape(x.shape)
  return x * interleave(cos) + rotated * interleave(sin)


def ours(x, pos, key_length, downscale, scale_base=512):
  # x: [1, length, 1, D] in our [batch, length, heads, head_dim] layout
  out = positions.apply_xpos(x[None, :, None, :], np.asarray(pos)[None],
                             center=positions.xpos_center(key_length), scale_base=scale_base,
                             downscale=downscale)
  return np.asarray(out)[0, :, 0, :]


@pytest.mark.parametrize("length,dim", [(7, 8), (12, 16), (5, 4)])
def test_xpos_matches_torchscale_full_sequence(length, dim):
  rng = np.random.RandomState(length)
  x = rng.randn(1, length, dim).astype(np.float64)
  for downscale in (False, True):
    expected = torchscale_xpos_reference(x, 0, downscale, scale_base=16)
    got = ours(x[0].astype(np.float32), np.arange(length), length, downscale, scale_base=16)
    np.testing.assert_allclose(got, expected[0], rtol=1e-5, atol=1e-5)


def test_xpos_matches_torchscale_decode_offset():
  """One new query at step n uses offset n: torchscale rotates it as the last of n+1 positions."""
  rng = np.random.RandomState(0)
  dim, src_len = 8, 9
  q = rng.randn(1, 1, dim)
  expected = torchscale_xpos_reference(q, offset=src_len - 1, downscale=False, scale_base=16)
  got = ours(q[0].astype(np.float32), [src_len - 1], src_len, False, scale_base=16)
  np.testing.assert_allclose(got, expected[0], rtol=1e-5, atol=1e-5)


def _score(q, k, n, m, center, scale_base=32):
  qn = ours(q[None], [n], 2 * center, False, scale_base)[0]
  km = ours(k[None], [m], 2 * center, True, scale_base)[0]
  return float(np.dot(qn, km))


def test_xpos_score_depends_only_on_relative_offset():
  rng = np.random.RandomState(1)
  q, k = rng.randn(16).astype(np.float32), rng.randn(16).astype(np.float32)
  for n, m in [(5, 2), (9, 9), (30, 11)]:
    base = _score(q, k, n, m, center=20)
    for shift in (1, 7, 40):
      assert _score(q, k, n + shift, m + shift, center=20) == pytest.approx(base, rel=1e-4, abs=1e-5)
    # ... and not on the centre either (it cancels between queries and keys)
    assert _score(q, k, n, m, center=3) == pytest.approx(base, rel=1e-4, abs=1e-5)


def test_xpos_envelope_decays_with_distance_as_zeta_power():
  """In rotary pair j the score is |q||k| zeta_j^(d/B) cos(d theta_j + phase): check the envelope."""
  dim, scale_base = 8, 32
  zeta = np.asarray(positions.xpos_decay_base(dim))
  for j in range(dim // 2):
    q = np.zeros(dim, np.float32)
    q[2 * j] = 1.0
    q_perp = np.zeros(dim, np.float32)
    q_perp[2 * j + 1] = 1.0
    k = q.copy()
    envelopes = []
    for distance in range(0, 40, 3):
      s1 = _score(q, k, 50 + distance, 50, 40, scale_base)
      s2 = _score(q_perp, k, 50 + distance, 50, 40, scale_base)
      envelope = math.hypot(s1, s2)
      assert envelope == pytest.approx(zeta[j] ** (distance / scale_base), rel=1e-4)
      envelopes.append(envelope)
    assert all(a > b for a, b in zip(envelopes, envelopes[1:]))


def test_xpos_decay_base_values():
  zeta = np.asarray(positions.xpos_decay_base(64))
  assert zeta[0] == pytest.approx(0.4 / 1.4)
  assert zeta[31] == pytest.approx((62 + 25.6) / 89.6)


def hf_sinusoid_table(num, dim, padding_idx=1):
  """Transcription of HF Kosmos2TextSinusoidalPositionalEmbedding.get_embedding."""
  half = dim // 2
  freq = np.exp(np.arange(half) * -(math.log(10000) / (half - 1)))
  angle = np.arange(num)[:, None] * freq[None]
  table = np.concatenate([np.sin(angle), np.cos(angle)], axis=1)
  if dim % 2:
    table = np.concatenate([table, np.zeros((num, 1))], axis=1)
  table[padding_idx] = 0
  return table


@pytest.mark.parametrize("dim", [16, 15])
def test_fairseq_sinusoidal_matches_hf_table_with_padding(dim):
  mask = np.array([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
  # HF: position ids = cumsum(mask) * mask + padding_idx
  hf_ids = np.cumsum(mask, axis=1) * mask + 1
  expected = hf_sinusoid_table(20, dim)[hf_ids]
  pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  got = np.asarray(positions.fairseq_sinusoidal(pos, dim, is_pad=mask == 0))
  np.testing.assert_allclose(got, expected, atol=1e-5)
