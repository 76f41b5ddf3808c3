"""Small helpers shared by tests and benchmarks: tiny configs and random batches."""
from __future__ import annotations

from typing import Any

import numpy as np

from kosmos_jax.models import config as config_lib

# Sinusoidal positions, no xPos: the Kosmos-2 / HF scheme at tiny size.
SINUSOIDAL = {"text.xpos": False, "text.abs_pos": "sinusoidal_fairseq"}


def tiny_config(**overrides: Any) -> config_lib.KosmosConfig:
  """The `tiny` preset with dotted overrides given as keyword args (dots as '__')."""
  return config_lib.get_config("tiny", {k.replace("__", "."): v for k, v in overrides.items()})


def image_block_batch(config: config_lib.KosmosConfig, batch: int, length: int,
                      image_starts: list[list[int]], seed: int = 0,
                      vocab_low: int = 4) -> dict[str, np.ndarray]:
  """Random tokens with one placeholder run of `num_image_tokens` at each given start per row.

  Returns tokens, image_token_mask, images [batch, max images, H, W, 3] uint8, segment_ids.
  """
  rng = np.random.RandomState(seed)
  v = config.vision
  tokens = rng.randint(vocab_low, config.text.vocab_size, (batch, length)).astype(np.int32)
  mask = np.zeros((batch, length), np.int32)
  num_images = max(1, max(len(s) for s in image_starts))
  for row, starts in enumerate(image_starts):
    for start in starts:
      mask[row, start:start + config.num_image_tokens] = 1
  images = rng.randint(0, 256, (batch, num_images, v.image_size, v.image_size, v.num_channels))
  return dict(tokens=tokens, image_token_mask=mask, images=images.astype(np.uint8),
              segment_ids=np.ones((batch, length), np.int32))


def converter_batch(config: config_lib.KosmosConfig, batch: int, length: int, num_images: int = 2,
                    seed: int = 0) -> dict[str, np.ndarray]:
  """A random batch in the feature-converter layout, packed like real data: each row holds two
  segments, each starting with an image block, then text; a padded tail; loss weights 0 on the
  image blocks and padding."""
  rng = np.random.RandomState(seed)
  q, v = config.num_image_tokens, config.vision
  tokens = rng.randint(4, config.text.vocab_size, (batch, length + 1)).astype(np.int32)
  segment_ids = np.zeros((batch, length), np.int32)
  positions = np.zeros((batch, length), np.int32)
  image_token_mask = np.zeros((batch, length), np.int32)
  weights = np.zeros((batch, length), np.float32)
  images = rng.randint(0, 256, (batch, num_images, v.image_size, v.image_size, 3)).astype(np.uint8)
  image_mask = np.zeros((batch, num_images), np.int32)
  for row in range(batch):
    used = length - rng.randint(0, length // 4)            # padded tail
    split = rng.randint(q + 3, used - q - 3)
    starts = [0, split][:num_images]
    ends = [split, used]
    for seg, (start, end) in enumerate(zip(starts, ends)):
      segment_ids[row, start:end] = seg + 1
      positions[row, start:end] = np.arange(end - start)
      image_token_mask[row, start + 1:start + 1 + q] = 1
      weights[row, start + 1 + q:end] = 1.0
      image_mask[row, seg] = 1
  return dict(decoder_input_tokens=tokens[:, :-1] * (segment_ids > 0),
              decoder_target_tokens=tokens[:, 1:] * (segment_ids > 0),
              decoder_loss_weights=weights, decoder_segment_ids=segment_ids,
              decoder_positions=positions, decoder_image_token_mask=image_token_mask,
              images=images, image_mask=image_mask)
