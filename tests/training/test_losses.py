"""The training loss against a direct numpy computation of weighted next-token cross-entropy."""
import jax.numpy as jnp
import numpy as np

from kosmos_jax.training import losses


def test_token_statistics_match_numpy_cross_entropy():
  rng = np.random.RandomState(0)
  logits = rng.randn(2, 5, 7).astype(np.float32) * 3
  targets = rng.randint(0, 7, (2, 5))
  weights = rng.randint(0, 2, (2, 5))
  weights[0, 0] = 1
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  correct = (logits.argmax(-1) == targets)

  stats = losses.token_statistics(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights))
  np.testing.assert_allclose(stats["loss_sum"], (nll * weights).sum(), rtol=1e-6)
  np.testing.assert_allclose(stats["weight_sum"], weights.sum())
  np.testing.assert_allclose(stats["correct_sum"], (correct * weights).sum())


def test_large_logits_stay_finite():
  logits = jnp.asarray([[[1e4, 0.0, -1e4]]], jnp.float32)
  stats = losses.token_statistics(logits, jnp.asarray([[1]]), jnp.asarray([[1]]))
  np.testing.assert_allclose(stats["loss_sum"], 1e4, rtol=1e-6)


def test_cross_entropy_gradient_is_softmax_minus_one_hot():
  """The hand-written backward against the textbook gradient and against autodiff of the
  plain formula (logsumexp minus the target logit), weighted by an upstream cotangent."""
  import jax  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(1)
  logits = rng.randn(3, 4, 11).astype(np.float32) * 2
  targets = rng.randint(0, 11, (3, 4))
  upstream = rng.rand(3, 4).astype(np.float32)

  def ours(x):
    return jnp.sum(losses.softmax_cross_entropy(x, jnp.asarray(targets)) * upstream)

  def plain(x):
    picked = jnp.take_along_axis(x, jnp.asarray(targets)[..., None], -1)[..., 0]
    return jnp.sum((jax.nn.logsumexp(x, -1) - picked) * upstream)

  softmax = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  textbook = (softmax - np.eye(11)[targets]) * upstream[..., None]
  grad = jax.grad(ours)(jnp.asarray(logits))
  np.testing.assert_allclose(grad, textbook, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad, jax.grad(plain)(jnp.asarray(logits)), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ours(jnp.asarray(logits)), plain(jnp.asarray(logits)), rtol=1e-6)
