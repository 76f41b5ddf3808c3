"""The training loss against a direct numpy computation of weighted next-token cross-entropy."""
import jax.numpy as jnp
import numpy as np
import pytest

from kosmos_jax.training import losses


def _identity_table_statistics(logits, targets, weights, chunks=2):
  """The sliced output layer with hidden = the logits and an identity table: logits as given."""
  vocab = logits.shape[-1]
  return losses.output_layer_statistics(jnp.asarray(logits), jnp.eye(vocab, dtype=jnp.float32),
                                        jnp.asarray(targets), jnp.asarray(weights), chunks)


def test_statistics_match_numpy_cross_entropy():
  rng = np.random.RandomState(0)
  logits = rng.randn(2, 6, 7).astype(np.float32) * 3
  targets = rng.randint(0, 7, (2, 6))
  weights = rng.randint(0, 2, (2, 6))
  weights[0, 0] = 1
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  correct = (logits.argmax(-1) == targets)

  stats = _identity_table_statistics(logits, targets, weights)
  np.testing.assert_allclose(stats["loss_sum"], (nll * weights).sum(), rtol=1e-6)
  np.testing.assert_allclose(stats["weight_sum"], weights.sum())
  np.testing.assert_allclose(stats["correct_sum"], (correct * weights).sum())


def test_large_logits_stay_finite():
  logits = np.asarray([[[1e4, 0.0, -1e4]]], np.float32)
  stats = _identity_table_statistics(logits, [[1]], [[1]])
  np.testing.assert_allclose(stats["loss_sum"], 1e4, rtol=1e-6)


def test_cross_entropy_gradient_is_softmax_minus_one_hot():
  """With an identity table the hidden states' gradient is the logits' gradient: the textbook
  (softmax - one_hot) * weight, times the upstream cotangent."""
  import jax  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(1)
  logits = rng.randn(3, 4, 11).astype(np.float32) * 2
  targets = rng.randint(0, 11, (3, 4))
  weights = rng.rand(3, 4).astype(np.float32)
  grad = jax.grad(lambda x: 0.5 * _identity_table_statistics(x, targets, weights)["loss_sum"])(
      jnp.asarray(logits))
  softmax = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  textbook = 0.5 * (softmax - np.eye(11)[targets]) * weights[..., None]
  np.testing.assert_allclose(grad, textbook, rtol=1e-5, atol=1e-6)


def _plain_statistics(hidden, table, targets, weights):
  """The textbook loss through plain autodiff: full logits, log_softmax, one-hot pick."""
  import jax  # pylint: disable=g-import-not-at-top
  logits = jnp.einsum("ble,ve->blv", hidden, table).astype(jnp.float32)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  picked = jnp.sum(log_probs * jax.nn.one_hot(targets, table.shape[0]), axis=-1)
  return -jnp.sum(picked * weights)


def _weights(pattern: str, rng) -> np.ndarray:
  """[3, 12] loss weights: random 0/1; image-like blocks and padded tails (rows with 9, 5 and
  no loss positions, so that trailing slices hold none); none at all; fractional everywhere."""
  if pattern == "random":
    return rng.randint(0, 2, (3, 12)).astype(np.float32)
  if pattern == "blocks":
    weights = np.ones((3, 12), np.float32)
    weights[0, 1:4] = 0                    # an image block: 9 loss positions
    weights[1, :2] = weights[1, 7:] = 0    # prompt + padded tail: 5
    weights[2] = 0                         # all padding
    return weights
  if pattern == "none":
    return np.zeros((3, 12), np.float32)
  return rng.rand(3, 12).astype(np.float32)


@pytest.mark.parametrize("pattern", ["random", "blocks", "none", "fractional"])
@pytest.mark.parametrize("chunks", [1, 2, 4, 5, 64])   # 5 -> 4 (a divisor of 12); 64 -> 12
def test_sliced_output_layer_matches_plain_loss_and_gradients(chunks, pattern):
  """Loss, correct count and both gradients of the sliced output layer against full logits
  through plain autodiff, under an upstream cotangent (0.37) and zero-weight positions (which
  the sliced form reorders and, past every row's last loss position, skips)."""
  import jax  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(2)
  hidden = jnp.asarray(rng.randn(3, 12, 8), jnp.float32)
  table = jnp.asarray(rng.randn(29, 8), jnp.float32)
  targets = jnp.asarray(rng.randint(0, 29, (3, 12)))
  weights = jnp.asarray(_weights(pattern, rng))

  def sliced(h, t):
    stats = losses.output_layer_statistics(h, t, targets, weights, chunks)
    return 0.37 * stats["loss_sum"], stats

  (value, stats), grads = jax.jit(jax.value_and_grad(sliced, (0, 1), has_aux=True))(hidden, table)
  plain = lambda h, t: 0.37 * _plain_statistics(h, t, targets, weights)
  plain_grads = jax.grad(plain, (0, 1))(hidden, table)
  np.testing.assert_allclose(value, plain(hidden, table), rtol=1e-5)
  for ours, theirs in zip(grads, plain_grads):
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
  logits = np.einsum("ble,ve->blv", hidden, table)
  correct = (logits.argmax(-1) == np.asarray(targets)) * np.asarray(weights)
  np.testing.assert_allclose(stats["correct_sum"], correct.sum())
  np.testing.assert_allclose(stats["weight_sum"], np.asarray(weights).sum())
  # Without differentiation (eval) the same sums, no gradient work.
  eval_stats = jax.jit(lambda h, t: losses.output_layer_statistics(h, t, targets, weights,
                                                                   chunks))(hidden, table)
  for key in stats:
    np.testing.assert_allclose(eval_stats[key], stats[key], rtol=1e-6)


def test_sliced_output_layer_in_bfloat16_stays_close():
  """bf16 hidden/table (the bf16 model's output layer): float32 loss, bf16 gradients, close to
  the float32 computation."""
  import jax  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(3)
  hidden = rng.randn(2, 8, 16).astype(np.float32)
  table = rng.randn(40, 16).astype(np.float32) * 0.3
  targets = jnp.asarray(rng.randint(0, 40, (2, 8)))
  weights = jnp.ones((2, 8))
  loss = lambda h, t: losses.output_layer_statistics(h, t, targets, weights, 4)["loss_sum"]
  grads16 = jax.grad(loss, (0, 1))(jnp.asarray(hidden, jnp.bfloat16),
                                   jnp.asarray(table, jnp.bfloat16))
  grads32 = jax.grad(loss, (0, 1))(jnp.asarray(hidden), jnp.asarray(table))
  for g16, g32 in zip(grads16, grads32):
    assert g16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(g16, np.float32), g32, rtol=0.05, atol=0.05)
