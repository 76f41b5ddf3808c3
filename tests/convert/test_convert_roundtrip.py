"""HF -> kosmos-jax -> HF round trips: bit-identical tensors, loadable by transformers, same
logits; sharded files; the CLI; configs HF cannot express."""
import json
import os

import jax
import ml_dtypes
import numpy as np
import pytest
import transformers

from kosmos_jax.checkpointing import params_io
from kosmos_jax.convert import hf_kosmos2
from kosmos_jax.inference import hf_compat
from kosmos_jax.convert import safetensors_io
from kosmos_jax.models import config as config_lib
from kosmos_jax.models import kosmos


def reload_hf(directory):
  return transformers.Kosmos2ForConditionalGeneration.from_pretrained(directory).eval()


@pytest.mark.parametrize("name,scan", [("a", True), ("b", False), ("c", True)])
def test_round_trip_is_bit_identical_and_reloads_in_transformers(
    name, scan, hf_model_dir, hf_state_dict, hf_forward, kosmos2_batch, tmp_path):
  hf_model, hf_dir = hf_model_dir(name)
  params, config, tokens = hf_kosmos2.load_hf_kosmos2(hf_dir, scan_layers=scan)
  out = str(tmp_path / "exported")
  hf_kosmos2.export_hf_kosmos2(params, config, out, tokens=tokens)

  original = hf_state_dict(hf_model)
  exported = safetensors_io.read_state_dict(out)
  if config.text.tie_word_embeddings:   # save_pretrained leaves the tied head out, so do we
    original.pop("text_model.lm_head.weight")
  assert sorted(exported) == sorted(original)
  for key, value in original.items():
    assert exported[key].dtype == value.dtype, key
    np.testing.assert_array_equal(exported[key], value, err_msg=key)

  reloaded = reload_hf(out)
  batch = kosmos2_batch(name)
  np.testing.assert_array_equal(hf_forward(reloaded, batch), hf_forward(hf_model, batch))
  with open(os.path.join(out, "generation_config.json")) as f:
    assert json.load(f)["eos_token_id"] == tokens.eos == 2


def test_sharded_export_is_read_back_by_us_and_transformers(hf_model_dir, hf_forward,
                                                            kosmos2_batch, tmp_path):
  hf_model, hf_dir = hf_model_dir("a")
  params, config, tokens = hf_kosmos2.load_hf_kosmos2(hf_dir)
  out = str(tmp_path / "sharded")
  hf_kosmos2.export_hf_kosmos2(params, config, out, tokens=tokens)          # one file first
  files = hf_kosmos2.export_hf_kosmos2(params, config, out, tokens=tokens, max_shard_bytes=100_000,
                                       overwrite=True)                    # replaced by shards
  assert safetensors_io.SAFE_INDEX in files
  assert not os.path.exists(os.path.join(out, safetensors_io.SAFE_SINGLE))    # stale file removed
  shards = [f for f in files if f.endswith(".safetensors")]
  assert len(shards) > 2
  again, _, _ = hf_kosmos2.load_hf_kosmos2(out)
  jax.tree_util.tree_map(np.testing.assert_array_equal, again, params)
  batch = kosmos2_batch("a")
  np.testing.assert_array_equal(hf_forward(reload_hf(out), batch), hf_forward(hf_model, batch))


def test_bfloat16_params_export_as_bfloat16(hf_model_dir, hf_state_dict, tmp_path):
  hf_model, hf_dir = hf_model_dir("b")
  params, config, tokens = hf_kosmos2.load_hf_kosmos2(hf_dir, param_dtype="bfloat16")
  assert {x.dtype for x in jax.tree_util.tree_leaves(params)} == {np.dtype(ml_dtypes.bfloat16)}
  out = str(tmp_path / "bf16")
  hf_kosmos2.export_hf_kosmos2(params, config, out, tokens=tokens)
  exported = safetensors_io.read_state_dict(out)
  key = "text_model.model.layers.2.ffn.fc1.weight"
  expected = hf_state_dict(hf_model)[key].astype(ml_dtypes.bfloat16)
  np.testing.assert_array_equal(exported[key], expected)
  with open(os.path.join(out, "config.json")) as f:
    assert json.load(f)["dtype"] == "bfloat16"
  reloaded = transformers.Kosmos2ForConditionalGeneration.from_pretrained(out)
  assert str(reloaded.dtype) == "torch.bfloat16"


def test_cli_import_then_export_round_trips(hf_model_dir, hf_state_dict, hf_forward,
                                            kosmos2_batch, tmp_path):
  hf_model, hf_dir = hf_model_dir("b")
  ckpt, out = str(tmp_path / "ckpt"), str(tmp_path / "hf")
  message = hf_kosmos2.run(["prog", f"--hf_dir={hf_dir}", f"--output_dir={ckpt}",
                            "--scan_layers=false"])
  assert "unrolled" in message
  params, config = params_io.load_params(ckpt)
  assert not config.scan_layers and "layers_2" in params["text"]
  assert config.text.num_heads == 6 and config.connector.num_latents == 4
  assert os.path.exists(os.path.join(ckpt, params_io.ASSETS_DIR, "generation_config.json"))
  batch = kosmos2_batch("b")
  logits = hf_compat.from_pretrained(ckpt)(**batch)          # the API also takes a checkpoint
  real = batch["attention_mask"].astype(bool)
  assert np.abs(logits - hf_forward(hf_model, batch))[real].max() <= 1e-4

  hf_kosmos2.run(["prog", "--direction=export", f"--checkpoint_dir={ckpt}", f"--output_dir={out}"])
  exported = safetensors_io.read_state_dict(out)
  for key, value in hf_state_dict(hf_model).items():
    if key != "text_model.lm_head.weight":
      np.testing.assert_array_equal(exported[key], value, err_msg=key)
  with pytest.raises(FileExistsError, match="overwrite"):
    hf_kosmos2.run(["prog", "--direction=export", f"--checkpoint_dir={ckpt}",
                    f"--output_dir={out}"])


def test_export_refuses_configs_hf_cannot_express(tmp_path):
  config = config_lib.get_config("tiny", {"connector.kind": "perceiver", "connector.num_layers": 1})
  params = jax.eval_shape(lambda: kosmos.init_params(config, jax.random.key(0)))
  with pytest.raises(ValueError) as err:
    hf_kosmos2.export_hf_kosmos2(params, config, str(tmp_path / "x"))
  message = str(err.value)
  assert "text.xpos=True" in message and "abs_pos='none'" in message
  assert "connector.kind='perceiver'" in message
  assert not os.path.exists(tmp_path / "x")
