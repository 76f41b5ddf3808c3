"""The weights-only checkpoint: round trip, sharded restore, layout handling, clear errors."""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from kosmos_jax.checkpointing import params_io
from kosmos_jax.models import config as config_lib
from kosmos_jax.models import param_layout


def random_params(config, seed=0):
  rng = np.random.RandomState(seed)
  return jax.tree_util.tree_map(lambda s: rng.randn(*s.shape).astype(s.dtype),
                                params_io.abstract_params(config))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  config = config_lib.get_config("tiny")
  params = random_params(config)
  directory = str(tmp_path_factory.mktemp("ckpt"))
  params_io.save_params(directory, params, config)
  return directory, params, config


def test_round_trip_values_and_config(saved):
  directory, params, config = saved
  assert sorted(os.listdir(directory)) == [params_io.CONFIG_FILE, params_io.PARAMS_DIR]
  with open(os.path.join(directory, params_io.CONFIG_FILE)) as f:
    assert config_lib.from_dict(json.load(f)) == config
  restored, restored_config = params_io.load_params(directory)
  assert restored_config == config
  jax.tree_util.tree_map(np.testing.assert_array_equal, restored, params)


def test_restore_directly_into_target_shardings_and_dtype(saved):
  directory, params, config = saved
  mesh = Mesh(np.array(jax.devices()[:8]), ("model",))

  def spec(s):
    axis = next((i for i, d in enumerate(s.shape) if d % 8 == 0), None)
    parts = [None] * len(s.shape)
    if axis is not None:
      parts[axis] = "model"
    return jax.ShapeDtypeStruct(s.shape, jnp.bfloat16, sharding=NamedSharding(mesh, P(*parts)))
  target = jax.tree_util.tree_map(spec, params_io.abstract_params(config))
  restored, _ = params_io.load_params(directory, target)
  kernel = restored["text"]["layers"]["ffn"]["fc1"]["kernel"]
  assert kernel.sharding == target["text"]["layers"]["ffn"]["fc1"]["kernel"].sharding
  assert len(kernel.sharding.device_set) == 8 and kernel.dtype == jnp.bfloat16
  np.testing.assert_array_equal(
      np.asarray(kernel.astype(jnp.float32)),
      params["text"]["layers"]["ffn"]["fc1"]["kernel"].astype(jnp.bfloat16).astype(np.float32))


def test_layout_conversion_and_mismatch(saved):
  directory, params, config = saved
  unrolled, unrolled_config = params_io.load_params(directory, scan_layers=False)
  assert not unrolled_config.scan_layers and "layers_1" in unrolled["vision"]
  np.testing.assert_array_equal(unrolled["text"]["layers_1"]["self_attn"]["q_proj"]["kernel"],
                                params["text"]["layers"]["self_attn"]["q_proj"]["kernel"][1])
  target = params_io.abstract_params(dataclasses.replace(config, scan_layers=False))
  with pytest.raises(ValueError, match="unrolled layer layout but the config expects scanned"):
    params_io.load_params(directory, target)


def test_save_checks_params_against_config_and_refuses_overwrite(saved, tmp_path):
  directory, params, config = saved
  with pytest.raises(FileExistsError, match="overwrite=True"):
    params_io.save_params(directory, params, config)
  params_io.save_params(directory, params, config, overwrite=True)

  bad = jax.tree_util.tree_map(lambda x: x, params)
  bad["connector"]["latent_query"] = np.zeros((3, 64), np.float32)
  with pytest.raises(ValueError,
                     match=r"wrong shapes.*connector/latent_query \(3, 64\) != \(8, 64\)"):
    params_io.save_params(str(tmp_path / "bad"), bad, config)
  unrolled = param_layout.unstack_layers(params)
  with pytest.raises(ValueError, match="unrolled layer layout"):
    params_io.save_params(str(tmp_path / "bad"), unrolled, config)
  with pytest.raises(ValueError, match="config.param_dtype"):
    params_io.save_params(str(tmp_path / "bad"),
                          jax.tree_util.tree_map(lambda x: x.astype(np.float16), params), config)
  assert not os.path.exists(tmp_path / "bad")


def test_not_a_checkpoint(tmp_path):
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(FileNotFoundError, match="hf_kosmos2 --hf_dir"):
    params_io.load_params(str(tmp_path))
