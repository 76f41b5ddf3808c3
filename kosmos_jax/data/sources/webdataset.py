"""Image-caption pairs in WebDataset tar shards, as img2dataset writes them.

Each sample is `{key}.jpg|png|webp` + `{key}.txt` (the caption) + `{key}.json` (url, caption,
key, status, error_message, width, height, original_width, original_height, exif, sha256); the
sibling `{shard}.parquet` and `{shard}_stats.json` are not needed. A sample is skipped (and
counted) when its image part is missing, its caption is missing, empty or not UTF-8, its JSON
is malformed or says `status` is not "success", or its image is under `min_image_bytes`.
"""
from __future__ import annotations

import json
from typing import Any, Mapping, Optional, Sequence

import tensorflow as tf

from kosmos_jax.data.sources import records
from kosmos_jax.data.sources.tar_files import TarIndex

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def parse_json(data: bytes, what: str) -> Any:
  """JSON bytes -> value; SkipRecord("json_malformed") when it does not parse."""
  try:
    return json.loads(data)
  except (ValueError, UnicodeDecodeError):
    raise records.SkipRecord("json_malformed") from None


class WebDatasetImageText(records.RecordFormat):
  """One image and its caption per sample."""

  reasons = ("image_missing", "json_malformed", "status_not_success", "image_too_small",
             *records.TEXT_REASONS)

  def __init__(self, image_extensions: Sequence[str] = IMAGE_EXTENSIONS,
               text_extension: str = "txt", caption_field: Optional[str] = None,
               min_image_bytes: int = 0):
    self.image_extensions = tuple(e.lower() for e in image_extensions)
    self.text_extension = text_extension
    self.caption_field = caption_field
    self.min_image_bytes = min_image_bytes
    self.tars = TarIndex()

  @property
  def features(self) -> Mapping[str, tf.TensorSpec]:
    return {"key": tf.TensorSpec([], tf.string), "image": tf.TensorSpec([], tf.string),
            "text": tf.TensorSpec([], tf.string)}

  def num_records(self, path: str) -> int:
    return len(self.tars.samples(path))

  def read(self, path: str, index: int):
    sample = self.tars.samples(path)[index]
    meta = None
    if "json" in sample.parts:
      meta = parse_json(self.tars.read_part(path, sample.parts["json"]), "json")
      if isinstance(meta, dict) and meta.get("status", "success") != "success":
        raise records.SkipRecord("status_not_success")
    image_ext = next((e for e in self.image_extensions if e in sample.parts), None)
    if image_ext is None:
      raise records.SkipRecord("image_missing")
    if self.caption_field is not None:
      text = meta.get(self.caption_field) if isinstance(meta, dict) else None
    elif self.text_extension in sample.parts:
      text = self.tars.read_part(path, sample.parts[self.text_extension])
    else:
      text = None
    text = records.check_text(text)
    image = self.tars.read_part(path, sample.parts[image_ext])
    if self.min_image_bytes and 0 < len(image) <= self.min_image_bytes:
      raise records.SkipRecord("image_too_small")
    return {"key": sample.key.encode(), "image": image, "text": text.encode()}, {}
