"""HF CLIP vision tower -> our VisionEncoder: same features, and the Kosmos-1 CLIP init."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from kosmos_jax.convert import hf_clip
from kosmos_jax.models import config as config_lib
from kosmos_jax.checkpointing import params_io
from kosmos_jax.models.vision import VisionEncoder

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              image_size=24, patch_size=8)


def zeros_like_params(config):
  return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype),
                                params_io.abstract_params(config))


@pytest.fixture(scope="module")
def clip_dirs(tmp_path_factory, randomize):
  """A CLIPVisionModel (random LayerNorm gains, too) and a CLIPModel sharing its vision weights."""
  torch.manual_seed(0)
  vision = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**VISION)).eval()
  randomize(vision, seed=7)
  vision_dir = str(tmp_path_factory.mktemp("clip_vision"))
  vision.save_pretrained(vision_dir)
  full = transformers.CLIPModel(transformers.CLIPConfig(
      vision_config=VISION, projection_dim=16,
      text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, vocab_size=64, bos_token_id=0, eos_token_id=2)))
  full.vision_model.load_state_dict(vision.state_dict())
  full_dir = str(tmp_path_factory.mktemp("clip_full"))
  full.save_pretrained(full_dir)
  return vision, vision_dir, full_dir


def test_features_match_clip_last_hidden_state_plus_post_ln(clip_dirs):
  vision, vision_dir, _ = clip_dirs
  base = dataclasses.replace(config_lib.VisionConfig(), l2_normalize=False)
  params, config = hf_clip.load_hf_clip_vision(vision_dir, base=base, scan_layers=True)
  sizes = (config.embed_dim, config.num_layers, config.num_heads, config.image_size)
  assert sizes == (32, 2, 4, 24)
  pixels = np.random.RandomState(0).randn(3, 3, 24, 24).astype(np.float32)      # NCHW
  with torch.no_grad():
    hidden = vision(pixel_values=torch.from_numpy(pixels)).last_hidden_state
    expected = vision.post_layernorm(hidden).numpy()
  encoder = VisionEncoder(config, scan_layers=True)
  got = np.asarray(jax.jit(encoder.apply)({"params": params},
                                          jnp.asarray(pixels.transpose(0, 2, 3, 1))))
  delta = np.abs(got - expected).max()
  print(f"CLIP max |feature delta| = {delta:.3g}")
  assert delta <= 1e-5


def test_clip_model_directory_and_kosmos_init(clip_dirs):
  _, vision_dir, full_dir = clip_dirs
  from_vision, _ = hf_clip.load_hf_clip_vision(vision_dir, scan_layers=False)
  from_full, _ = hf_clip.load_hf_clip_vision(full_dir, scan_layers=False)   # text tower ignored
  jax.tree_util.tree_map(np.testing.assert_array_equal, from_full, from_vision)

  config = config_lib.get_config("tiny", {"vision.image_size": 24, "vision.embed_dim": 32,
                                          "vision.mlp_dim": 64})
  params = zeros_like_params(config)
  new_params, new_config = hf_clip.init_vision_from_clip(config, params, vision_dir)
  assert new_config == config                                   # same sizes, feature prep kept
  np.testing.assert_array_equal(new_params["vision"]["layers"]["mlp"]["fc1"]["kernel"][1],
                                from_vision["layers_1"]["mlp"]["fc1"]["kernel"])
  assert new_params["text"] is params["text"]

  too_big = config_lib.get_config("tiny", {"vision.image_size": 24})          # embed_dim 64
  with pytest.raises(ValueError, match="embed_dim: config 64 vs CLIP 32"):
    hf_clip.init_vision_from_clip(too_big, zeros_like_params(too_big), vision_dir)
