"""User errors while importing HF weights give messages that say what is wrong and what to do."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors import numpy as safetensors_numpy

from kosmos_jax.convert import hf_kosmos2
from kosmos_jax.convert import safetensors_io


def copy_dir(src, dst):
  shutil.copytree(src, dst)
  return str(dst)


def edit_config(directory, **text_updates):
  path = os.path.join(directory, "config.json")
  with open(path) as f:
    config = json.load(f)
  config["text_config"].update(text_updates)
  with open(path, "w") as f:
    json.dump(config, f)


def edit_weights(directory, fn):
  path = os.path.join(directory, "model.safetensors")
  tensors = safetensors_numpy.load_file(path)
  fn(tensors)
  safetensors_numpy.save_file(tensors, path, metadata={"format": "pt"})


def test_pickled_checkpoint_is_refused_unless_allowed(hf_model_dir, tmp_path):
  hf_model, hf_dir = hf_model_dir("b")
  pickled = tmp_path / "pickled"
  pickled.mkdir()
  shutil.copy(os.path.join(hf_dir, "config.json"), pickled)
  torch.save(hf_model.state_dict(), pickled / "pytorch_model.bin")
  with pytest.raises(ValueError, match="--allow_pickle") as err:
    hf_kosmos2.load_hf_kosmos2(str(pickled))
  assert "weights_only=True" in str(err.value)
  with pytest.raises(ValueError, match="--allow_pickle"):
    hf_kosmos2.run(["prog", f"--hf_dir={pickled}", f"--output_dir={tmp_path / 'out'}"])
  params, _, _ = hf_kosmos2.load_hf_kosmos2(str(pickled), allow_pickle=True, scan_layers=False)
  reference, _, _ = hf_kosmos2.load_hf_kosmos2(hf_dir, scan_layers=False)
  np.testing.assert_array_equal(params["text"]["layers_1"]["ffn"]["fc2"]["kernel"],
                                reference["text"]["layers_1"]["ffn"]["fc2"]["kernel"])


def test_missing_files(hf_model_dir, tmp_path):
  _, hf_dir = hf_model_dir("b")
  with pytest.raises(FileNotFoundError, match="not a directory"):
    hf_kosmos2.load_hf_kosmos2(str(tmp_path / "nowhere"))
  no_config = copy_dir(hf_dir, tmp_path / "no_config")
  os.remove(os.path.join(no_config, "config.json"))
  with pytest.raises(FileNotFoundError, match="config.json is missing"):
    hf_kosmos2.load_hf_kosmos2(no_config)
  no_weights = copy_dir(hf_dir, tmp_path / "no_weights")
  os.remove(os.path.join(no_weights, "model.safetensors"))
  with pytest.raises(FileNotFoundError, match="No weights.*model.safetensors"):
    hf_kosmos2.load_hf_kosmos2(no_weights)
  lost_shard = copy_dir(hf_dir, tmp_path / "lost_shard")
  os.remove(os.path.join(lost_shard, "model.safetensors"))
  with open(os.path.join(lost_shard, safetensors_io.SAFE_INDEX), "w") as f:
    json.dump({"weight_map": {"a": "model-00001-of-00002.safetensors"}}, f)
  with pytest.raises(FileNotFoundError, match="model-00001-of-00002.safetensors"):
    hf_kosmos2.load_hf_kosmos2(lost_shard)


def test_shape_unknown_and_missing_tensors_are_listed(hf_model_dir, tmp_path):
  _, hf_dir = hf_model_dir("b")
  wrong = copy_dir(hf_dir, tmp_path / "wrong")
  edit_config(wrong, ffn_dim=64)
  with pytest.raises(ValueError, match=r"wrong shapes: .*layers\.0\.ffn\.fc1\.weight \(96, 48\) "
                     r"\(expected \(64, 48\)") as err:
    hf_kosmos2.load_hf_kosmos2(wrong)
  assert "Check that config.json matches" in str(err.value)

  def damage(tensors):
    del tensors["image_to_text_projection.latent_query"]
    tensors["text_model.model.layers.0.self_attn.rotary.weight"] = np.zeros(3, np.float32)
  broken = copy_dir(hf_dir, tmp_path / "broken")
  edit_weights(broken, damage)
  with pytest.raises(ValueError) as err:
    hf_kosmos2.load_hf_kosmos2(broken)
  message = str(err.value)
  assert "missing tensors: image_to_text_projection.latent_query" in message
  assert "unknown tensors" in message and "layers.0.self_attn.rotary.weight" in message


def test_unsupported_config_values_are_all_listed(hf_model_dir, tmp_path):
  _, hf_dir = hf_model_dir("b")
  odd = copy_dir(hf_dir, tmp_path / "odd")
  edit_config(odd, activation_function="relu", layerdrop=0.1)
  with pytest.raises(ValueError) as err:
    hf_kosmos2.load_hf_kosmos2(odd)
  message = str(err.value)
  assert "activation_function='relu'" in message and "layerdrop=0.1" in message


def test_untied_head_that_claims_to_be_tied_is_caught(hf_model_dir, tmp_path):
  _, hf_dir = hf_model_dir("b")
  lying = copy_dir(hf_dir, tmp_path / "lying")

  def add_head(tensors):
    tensors["text_model.lm_head.weight"] = tensors["text_model.model.embed_tokens.weight"] + 1
  edit_weights(lying, add_head)
  with pytest.raises(ValueError, match="tie_word_embeddings=false"):
    hf_kosmos2.load_hf_kosmos2(lying)


def test_clip_directory_is_not_taken_for_kosmos2(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
  with pytest.raises(ValueError, match="hf_clip"):
    hf_kosmos2.load_hf_kosmos2(str(tmp_path))
