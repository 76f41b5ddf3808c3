"""Hand-written backward passes of the building blocks against autodiff of the plain formula."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kosmos_jax.models import layers


@pytest.mark.parametrize("x_shape,kernel_shape,in_dims", [
    ((2, 5, 6), (6, 4), 1),          # [batch, length, in] @ [in, out]
    ((3, 6), (6, 2, 3), 1),          # multi-dim output (e.g. [embed, heads, head_dim])
    ((2, 5, 2, 3), (2, 3, 4), 2),    # multi-dim input (e.g. out_proj over [heads, head_dim])
])
def test_project_matches_dot_general_and_its_gradients(x_shape, kernel_shape, in_dims):
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(*x_shape), jnp.float32)
  kernel = jnp.asarray(rng.randn(*kernel_shape), jnp.float32)
  contract_x = tuple(range(len(x_shape) - in_dims, len(x_shape)))

  def plain(x, k):
    return jax.lax.dot_general(x, k, ((contract_x, tuple(range(in_dims))), ((), ())))

  out_shape = plain(x, kernel).shape
  upstream = jnp.asarray(rng.randn(*out_shape), jnp.float32)
  np.testing.assert_allclose(layers.project(x, kernel, in_dims), plain(x, kernel), rtol=1e-6)
  ours = jax.grad(lambda x, k: jnp.sum(layers.project(x, k, in_dims) * upstream), (0, 1))(x, kernel)
  ref = jax.grad(lambda x, k: jnp.sum(plain(x, k) * upstream), (0, 1))(x, kernel)
  for got, want in zip(ours, ref):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_exact_gelu_matches_float64_erf_formula():
  """x/2 (1 + erf(x/sqrt2)) in float64 (torch's F.gelu formula); the float32 form agrees to
  ~1e-7 absolute (its far negative tail rounds to -0, as torch's does)."""
  import math  # pylint: disable=g-import-not-at-top
  x = np.linspace(-8.0, 8.0, 1001)
  want = np.array([0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x])
  gelu = layers.activation_fn("gelu")
  np.testing.assert_allclose(gelu(jnp.asarray(x, jnp.float32)), want, rtol=1e-6, atol=1e-6)
  dgelu = [0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) + v * math.exp(-v * v / 2) / math.sqrt(2 * math.pi)
           for v in x]
  np.testing.assert_allclose(jax.vmap(jax.grad(gelu))(jnp.asarray(x, jnp.float32)), dgelu,
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("widths", [(12, 12, 12), (8, 4)])
def test_project_fanout_matches_separate_projections_and_their_gradients(widths):
  """One shared input, several kernels (q/k/v): same outputs and gradients as one `project`
  per kernel, with x's gradient from one GEMM over the concatenated kernels."""
  rng = np.random.RandomState(1)
  x = jnp.asarray(rng.randn(2, 5, 6), jnp.float32)
  kernels = tuple(jnp.asarray(rng.randn(6, 2, w // 2), jnp.float32) for w in widths)
  upstream = [jnp.asarray(rng.randn(2, 5, 2, w // 2), jnp.float32) for w in widths]

  def loss(fn, x, kernels):
    return sum(jnp.sum(y * u) for y, u in zip(fn(x, kernels), upstream))

  fanout = lambda x, ks: layers.project_fanout(x, ks, 1)
  separate = lambda x, ks: tuple(jnp.einsum("bli,ihd->blhd", x, k) for k in ks)
  for got, want in zip(fanout(x, kernels), separate(x, kernels)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  ours = jax.grad(lambda x, ks: loss(fanout, x, ks), (0, 1))(x, kernels)
  ref = jax.grad(lambda x, ks: loss(separate, x, ks), (0, 1))(x, kernels)
  np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5, atol=1e-5)
  for got, want in zip(ours[1], ref[1]):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_causal_query_blocks_bounds():
  assert layers.causal_query_blocks(48) == [(0, 48)]
  assert layers.causal_query_blocks(255) == [(0, 255)]
  assert layers.causal_query_blocks(256) == [(0, 128), (128, 256)]
  assert layers.causal_query_blocks(300) == [(0, 150), (150, 300)]
  assert layers.causal_query_blocks(512) == [(0, 128), (128, 256), (256, 384), (384, 512)]
  assert layers.causal_query_blocks(2050) == [(0, 512), (512, 1024), (1024, 1536), (1536, 2050)]


@pytest.mark.parametrize("xpos", [False, True])
def test_causal_blocks_give_the_full_attention_on_real_tokens(xpos):
  """Attention(causal=True) (queries in blocks, keys past a block's end skipped) against the
  same module attending all keys, on packed segments with a padded tail: same outputs on real
  tokens and same parameter and input gradients of a loss over real tokens."""
  rng = np.random.RandomState(0)
  batch, length, width = 2, 300, 16
  segment_ids = np.ones((batch, length), np.int32)
  segment_ids[0, 120:] = 2                      # two packed examples
  segment_ids[1, 260:] = 0                      # padded tail
  real = jnp.asarray(segment_ids > 0)[..., None]
  positions = jnp.asarray(np.concatenate([np.arange(120), np.arange(180)])[None].repeat(2, 0))
  mask = layers.make_causal_mask(jnp.asarray(segment_ids))
  x = jnp.asarray(rng.randn(batch, length, width), jnp.float32)
  upstream = jnp.asarray(rng.randn(batch, length, width), jnp.float32) * real
  make = lambda causal: layers.Attention(num_heads=2, head_dim=8, out_features=width,
                                         inner_ln=True, xpos=xpos, causal=causal)
  params = make(False).init(jax.random.key(0), x, x, mask=mask, positions=positions)

  def loss(causal, params, x):
    out = make(causal).apply(params, x, x, mask=mask, positions=positions)
    return jnp.sum(out * upstream), out
  (_, full), full_grads = jax.value_and_grad(functools.partial(loss, False), (0, 1),
                                             has_aux=True)(params, x)
  (_, blocked), blocked_grads = jax.value_and_grad(functools.partial(loss, True), (0, 1),
                                                   has_aux=True)(params, x)
  np.testing.assert_allclose(np.where(real, blocked, 0), np.where(real, full, 0),
                             rtol=1e-5, atol=1e-6)
  for got, want in zip(jax.tree_util.tree_leaves(blocked_grads),
                       jax.tree_util.tree_leaves(full_grads)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _bf16_rounding_error(got, exact):
  """Largest |got - exact| in units of exact's own bf16 spacing (1 ulp = 2^-7 relative)."""
  ulp = np.maximum(np.abs(exact), 1e-30) * 2.0 ** -7
  return float(np.max(np.abs(np.asarray(got, np.float64) - exact) / ulp))


@pytest.mark.parametrize("name", ["dot_general", "einsum"])
def test_bf16_products_accumulate_in_float32_and_read_bf16_operands(name):
  """A long bf16 product (K = 4096) is the float64 product of the same bf16 values rounded
  once to bf16 (within 1 ulp); a bf16 accumulation would drift by tens of ulps. On CPU the GEMM
  reads the operands as bf16 (no conversion to float32 before it), which is what makes XLA:CPU
  use its native bf16 kernels."""
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.rand(2, 8, 4096) + 0.5, jnp.bfloat16)
  y = jnp.asarray(rng.rand(2, 4096, 16) + 0.5, jnp.bfloat16)
  fn = {"dot_general": lambda x, y: layers.dot_general(x, y, (((2,), (1,)), ((0,), (0,)))),
        "einsum": lambda x, y: layers.einsum("bik,bkj->bij", x, y)}[name]
  got = jax.jit(fn)(x, y)
  exact = np.einsum("bik,bkj->bij", np.asarray(x, np.float64), np.asarray(y, np.float64))
  assert got.dtype == jnp.bfloat16
  assert _bf16_rounding_error(got, exact) <= 1.0
  plain = jnp.einsum("bik,bkj->bij", x, y, preferred_element_type=jnp.bfloat16)
  assert got.shape == plain.shape
  if jax.default_backend() == "cpu":
    hlo = jax.jit(fn).lower(x, y).compile().as_text()
    assert "f32[2,8,4096]" not in hlo and "f32[2,4096,16]" not in hlo, "operands were upcast"


def test_float32_products_are_unchanged():
  rng = np.random.RandomState(1)
  x, y = (jnp.asarray(rng.randn(*s), jnp.float32) for s in [(6, 5), (5, 3)])
  np.testing.assert_array_equal(layers.matmul(x, y), x @ y)
  np.testing.assert_array_equal(layers.einsum("ik,kj->ij", x, y), jnp.einsum("ik,kj->ij", x, y))
