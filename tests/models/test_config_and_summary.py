"""Presets, config validation and serialisation, the parameter summary CLI, remat equivalence."""
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import tiny
from kosmos_jax.models import config as config_lib
from kosmos_jax.models import kosmos
from kosmos_jax.models import summary


def test_kosmos1_preset_is_the_paper_model():
  c = config_lib.get_config("kosmos1")
  t, v = c.text, c.vision
  assert (t.num_layers, t.embed_dim, t.ffn_dim, t.num_heads, t.vocab_size) == (24, 2048, 8192, 32, 64007)
  assert t.xpos and t.abs_pos == "none" and t.subln and t.tie_word_embeddings
  assert t.dropout == 0.1 and t.init_gamma == pytest.approx(1.96754, abs=1e-5)
  assert (v.image_size, v.patch_size, v.embed_dim, v.num_layers, v.num_heads) == (224, 14, 1024, 24, 16)
  assert c.connector.num_latents == 64 and c.num_image_tokens == 64
  assert c.vision_trainable == "last_layer"


def test_kosmos2_hf_preset_differs_only_where_the_release_does():
  k1, k2 = config_lib.get_config("kosmos1"), config_lib.get_config("kosmos2_hf")
  assert k2.text.vocab_size == 65037 and not k2.text.xpos
  assert k2.text.abs_pos == "sinusoidal_fairseq" and k2.text.embed_dropout_twice
  assert k1.vision == k2.vision and k1.connector == k2.connector


def test_overrides_and_errors_name_the_field():
  c = config_lib.get_config("tiny", {"text.num_layers": 3, "dtype": "bfloat16"})
  assert c.text.num_layers == 3 and c.dtype == "bfloat16"
  with pytest.raises(ValueError, match="text.num_layerz"):
    config_lib.get_config("tiny", {"text.num_layerz": 3})
  with pytest.raises(ValueError, match="not divisible"):
    config_lib.get_config("tiny", {"text.num_heads": 5})
  with pytest.raises(ValueError, match="abs_pos"):
    config_lib.get_config("tiny", {"text.abs_pos": "learned"})
  with pytest.raises(ValueError, match="Unknown model preset"):
    config_lib.get_config("kosmos3")


@pytest.mark.parametrize("name", sorted(config_lib.PRESETS))
def test_config_json_round_trip(name):
  c = config_lib.get_config(name)
  assert config_lib.from_dict(json.loads(json.dumps(config_lib.to_dict(c)))) == c


def test_summary_counts_the_paper_model_exactly():
  rows = summary.parameter_rows(config_lib.get_config("kosmos1"))
  totals = summary.tower_totals(rows)
  # docs/model.md §10: LM 1,340,180,480; CLIP ViT-L/14 303,179,776; connector 19,015,680.
  assert totals == {"text": 1_340_180_480, "vision": 303_179_776, "connector": 19_015_680}
  names = {r[0]: r[2] for r in rows}
  assert names["text/layers/self_attn/q_proj/kernel"] == ("layers", "embed", "heads", "kv")
  assert names["text/embed_tokens/embedding"] == ("vocab", "embed")
  assert all(axes for axes in names.values()), "every parameter has logical axis names"


def test_summary_cli_last_line():
  out = subprocess.run([sys.executable, "-m", "kosmos_jax.models.summary", "--model=kosmos1"],
                       capture_output=True, text=True, check=True, timeout=120).stdout
  assert out.strip().splitlines()[-1] == "total params: 1662375936"
  assert "language model" in out and "(1.340 B)" in out


@pytest.mark.parametrize("policy", ["minimal", pytest.param("full", marks=pytest.mark.slow)])
def test_remat_policy_gives_identical_loss_and_grads(policy):
  results = []
  for remat in ("none", policy):
    config = tiny.tiny_config(remat_policy=remat)
    params = jax.jit(lambda r: kosmos.init_params(config, r))(jax.random.key(0))
    batch = tiny.image_block_batch(config, 2, 16, [[1], [2]])
    model = kosmos.Kosmos(config)
    loss = lambda p: jnp.mean(model.apply({"params": p}, **batch) ** 2)
    results.append(jax.jit(jax.value_and_grad(loss))(params))
  (loss_plain, grads_plain), (loss_remat, grads_remat) = results
  np.testing.assert_allclose(loss_remat, loss_plain, rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(grads_remat), jax.tree_util.tree_leaves(grads_plain)):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)
