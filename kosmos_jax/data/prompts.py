"""Inference prompts in exactly the training layout: `<s>`, then for each image
`<image>` + placeholders + `</image>`, and the text pieces in order.

A prompt is written as text with one literal `<image>` marker (IMAGE_MARKER) where each image
goes; `split_prompt` turns it and its images into the segments `encode_prompt` takes.

  tokens, image_token_mask, images = encode_prompt(vocab, split_prompt("<image> an image of",
                                                                       images), 64)
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from kosmos_jax.data.vocab import KosmosVocabulary

Segment = Union[str, np.ndarray]   # text, or one image [H, W, 3] uint8

IMAGE_MARKER = "<image>"


def with_image_markers(prompt: str, num_images: int) -> str:
  """A prompt without markers gets one per image in front; otherwise the markers must match."""
  markers = prompt.count(IMAGE_MARKER)
  if markers == 0 and num_images:
    return IMAGE_MARKER * num_images + " " + prompt
  if markers != num_images:
    raise ValueError(f"the prompt has {markers} {IMAGE_MARKER} markers but {num_images} images "
                     f"were given: {prompt[:80]!r}")
  return prompt


def split_prompt(prompt: str, images: Sequence[np.ndarray]) -> list[Segment]:
  """"<image> Question: ..." + images -> [image, "Question: ..."] segments for encode_prompt."""
  pieces = prompt.split(IMAGE_MARKER)
  if len(pieces) - 1 != len(images):
    raise ValueError(f"prompt has {len(pieces) - 1} {IMAGE_MARKER} markers but "
                     f"{len(images)} images: {prompt[:80]!r}")
  segments: list[Segment] = []
  for k, piece in enumerate(pieces):
    if k:
      segments.append(images[k - 1])
    if piece.strip():
      segments.append(piece.strip())
  return segments


def encode_prompt(vocab: KosmosVocabulary, segments: Sequence[Segment], num_image_tokens: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Returns (tokens [length] int32, image_token_mask [length] int32, images [n, H, W, 3]).

  Text segments are tokenised separately, as the training preprocessors do for prompt and
  answer, so a generated continuation starts at a word boundary.
  """
  tokens, mask, images = [vocab.bos_id], [0], []
  for segment in segments:
    if isinstance(segment, str):
      ids = list(vocab.encode(segment)) if segment else []
      tokens += ids
      mask += [0] * len(ids)
      continue
    image = np.asarray(segment)
    if image.ndim != 3:
      raise ValueError(f"image segments must be [H, W, 3] arrays, got shape {image.shape}")
    tokens += [vocab.image_id] + [vocab.image_placeholder_id] * num_image_tokens
    tokens.append(vocab.end_image_id)
    mask += [0] + [1] * num_image_tokens + [0]
    images.append(image)
  stacked = np.stack(images) if images else np.zeros((0, 1, 1, 3), np.uint8)
  return np.asarray(tokens, np.int32), np.asarray(mask, np.int32), stacked


def batch_prompts(prompts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                  image_size: int, pad_id: int = 0
                  ) -> dict[str, np.ndarray]:
  """Left-pads encoded prompts into a batch for KV-cache decoding.

  Returns tokens, image_token_mask, segment_ids (0 = padding) [batch, length] and
  images [batch, max images, S, S, 3] (rows with fewer images get zero images).
  """
  length = max(len(p[0]) for p in prompts)
  max_images = max(1, max(len(p[2]) for p in prompts))
  batch = len(prompts)
  tokens = np.full((batch, length), pad_id, np.int32)
  mask = np.zeros((batch, length), np.int32)
  segments = np.zeros((batch, length), np.int32)
  images = np.zeros((batch, max_images, image_size, image_size, 3), np.uint8)
  for row, (t, m, imgs) in enumerate(prompts):
    tokens[row, length - len(t):] = t
    mask[row, length - len(t):] = m
    segments[row, length - len(t):] = 1
    for k, image in enumerate(imgs):
      if image.shape[:2] != (image_size, image_size):
        raise ValueError(f"prompt image {k} of row {row} is {image.shape[:2]}, the model "
                         f"expects {image_size}x{image_size}; resize it first")
      images[row, k] = image
  return {"tokens": tokens, "image_token_mask": mask, "segment_ids": segments, "images": images}
