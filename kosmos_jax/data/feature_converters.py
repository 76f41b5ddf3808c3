"""The multimodal feature converter: Kosmos task features -> packed model features.

Per example it expands each image slot `<image> </image>` to `<image>`, `num_image_tokens`
placeholders and `</image>`, truncates to the row length without cutting an image block, and
builds the LM shift (`<s>`=0 first, seqio's convention). Then it packs several examples into one
row until either `length` tokens or `max_images` images would overflow. Model features per row:

  decoder_target_tokens, decoder_input_tokens   int32 [length]   0 on padding
  decoder_loss_weights                          int32 [length]   0 on padding, image tokens,
                                                                 untrained (instruction) parts
  decoder_segment_ids                           int32 [length]   0 padding, 1, 2, ... per example
  decoder_positions                             int32 [length]   restart at 0 in each example
  decoder_image_token_mask                      int32 [length]   1 where the INPUT is a placeholder
  images                                        uint8 [max_images, S, S, 3]
  image_mask                                    int32 [max_images]  1 for real images
The k-th placeholder run of a row belongs to images[k]. Only tf.data/TF ops are used (the packer
is a `Dataset.scan`), so an iterator over the result can be saved with `tf.train.Checkpoint`.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import gin
import numpy as np
import seqio
import tensorflow as tf

from kosmos_jax.data import images as images_lib
from kosmos_jax.data import preprocessors
from kosmos_jax.data.vocab import KosmosVocabulary

FeatureSpec = seqio.FeatureConverter.FeatureSpec
TOKEN_FEATURES = ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
                  "decoder_segment_ids", "decoder_positions", "decoder_image_token_mask")
# Every feature of a converter batch (what the model reads) and its dtype.
MODEL_FEATURE_DTYPES = {**{name: np.int32 for name in TOKEN_FEATURES},
                        "images": np.uint8, "image_mask": np.int32}
_plain = preprocessors.no_autograph
# Why the converter drops an example (counted by preprocessors.record_counts()).
DROP_REASONS = ("image_slot_mismatch", "no_loss_tokens")
# Per-example (unpadded) keys used between expansion and packing.
_EXAMPLE_KEYS = ("targets", "inputs", "loss", "image_tokens")


def batch_shapes(batch_size: int, length: int, max_images: int, image_size: int,
                 num_channels: int = 3) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """(shape, dtype) of every feature of a batch of converter rows: the model's input schema."""
  shapes = {name: (batch_size, length) for name in TOKEN_FEATURES}
  shapes["images"] = (batch_size, max_images, image_size, image_size, num_channels)
  shapes["image_mask"] = (batch_size, max_images)
  return {name: (shapes[name], np.dtype(dtype)) for name, dtype in MODEL_FEATURE_DTYPES.items()}


def task_feature_lengths(length: int, max_images: int) -> dict[str, int]:
  """The `task_feature_lengths` of this converter: row length and images per row."""
  return {"targets": length, "images": max_images}


@gin.configurable
class KosmosFeatureConverter(seqio.FeatureConverter):
  """Packs (or pads) Kosmos text, image-text and interleaved examples into model rows.

  Args:
    vocabulary: the tasks' KosmosVocabulary (for the image and placeholder ids).
    num_image_tokens: placeholders per image = the model's resampler latents (64 in the paper).
    image_size: model image side; task images of another size are resized and centre-cropped.
    pack: pack several examples per row; False gives one example per row (segment id 1).
  """

  TASK_FEATURES = {
      "targets": FeatureSpec(dtype=tf.int32),
      "images": FeatureSpec(dtype=tf.uint8, rank=4),
  }
  MODEL_FEATURES = {name: FeatureSpec(dtype=tf.as_dtype(dtype), rank=4 if name == "images" else 1)
                    for name, dtype in MODEL_FEATURE_DTYPES.items()}
  # Segment ids and positions are always model features, so packing adds none.
  PACKING_FEATURE_DTYPES = {}

  def __init__(self, vocabulary: KosmosVocabulary, num_image_tokens: int, image_size: int,
               pack: bool = True, apply_length_check: bool = True):
    if num_image_tokens < 1:
      raise ValueError(f"num_image_tokens={num_image_tokens} must be >= 1 (the model's latents)")
    if image_size < 1:
      raise ValueError(f"image_size={image_size} must be >= 1")
    self.vocabulary = vocabulary
    self.num_image_tokens = num_image_tokens
    self.image_size = image_size
    # `use_custom_packing_ops` only lifts seqio's rank-1 check on packed model features: the
    # packer here is our own and carries the rank-4 images.
    super().__init__(pack=pack, use_custom_packing_ops=True,
                     apply_length_check=apply_length_check, bos_id=vocabulary.bos_id)

  def _validate_dataset(self, ds, expected_features, expected_lengths, strict, error_label):
    # Task examples may be longer than a row: `_expand` truncates them without cutting an image
    # block, so only the (strict) output lengths are asserted, not the input ones.
    if not strict:
      expected_lengths = {}
    return super()._validate_dataset(ds, expected_features, expected_lengths, strict,
                                     error_label)

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> dict[str, int]:
    length, max_images = task_feature_lengths["targets"], task_feature_lengths["images"]
    lengths = {name: length for name in TOKEN_FEATURES}
    lengths.update(images=max_images, image_mask=max_images)
    return lengths

  def _convert_features(self, ds: tf.data.Dataset,
                        task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    length, max_images = task_feature_lengths["targets"], task_feature_lengths["images"]
    if length < self.num_image_tokens + 3:
      raise ValueError(f"length={length} cannot hold an image block of num_image_tokens="
                       f"{self.num_image_tokens} + 2 tokens plus text")
    if max_images < 1:
      raise ValueError(f"task_feature_lengths['images']={max_images} must be >= 1")
    spec = ds.element_spec
    if "loss_weights" not in spec:
      raise ValueError("Kosmos tasks must emit 'loss_weights' next to 'targets' (use the "
                       "sequence preprocessors in kosmos_jax.data.preprocessors)")
    ds = ds.map(_plain(lambda ex: self._expand(ex, length, max_images)),
                num_parallel_calls=tf.data.AUTOTUNE)
    ds = preprocessors.filter_by_code(ds, "drop_code", DROP_REASONS,
                                      tally_keys=("truncated_to_row_length",))
    if self.pack:
      ds = pack_examples(ds, length, max_images, self.image_size)
    else:
      ds = ds.map(_plain(
          lambda ex: _pad_row(_single_row(ex), length, max_images, self.image_size)),
                  num_parallel_calls=tf.data.AUTOTUNE)
    return ds.with_options(preprocessors.stateful_pipeline_options())

  # --- per example -----------------------------------------------------------------------------

  def _slots(self, targets: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Task-level slot openers and closers: `<image>` directly followed by `</image>`."""
    vocab = self.vocabulary
    following = tf.concat([targets[1:], [-1]], axis=0)
    is_open = tf.equal(targets, vocab.image_id) & tf.equal(following, vocab.end_image_id)
    is_close = tf.concat([[False], is_open[:-1]], axis=0)
    return is_open, is_close

  def _is_consistent(self, ex, length: int, max_images: int) -> tf.Tensor:
    """True unless image slots and images disagree, or loss_weights do not match targets.

    Longer-than-row examples may already be trimmed by seqio (targets to `length`, images to
    `max_images`); that is truncation, not an error.
    """
    targets, images = ex["targets"], ex["images"]
    num_tokens = tf.size(targets)
    trimmed = num_tokens >= length
    num_weights = tf.size(ex["loss_weights"])
    weights_ok = tf.equal(num_weights, num_tokens) | ((num_weights > num_tokens) & trimmed)
    num_slots = tf.reduce_sum(tf.cast(self._slots(targets)[0], tf.int32))
    num_images = tf.shape(images)[0]
    images_ok = (tf.equal(num_images, num_slots)
                 | (tf.minimum(num_images, num_slots) >= max_images)
                 | ((num_images > num_slots) & trimmed))
    return weights_ok & images_ok

  def _expand(self, ex, length: int, max_images: int) -> dict[str, tf.Tensor]:
    """Expands slots to image blocks, truncates safely, and makes the LM inputs.

    `drop_code` is 0 for a usable example, else 1 + the index of its DROP_REASONS;
    `truncated_to_row_length` says whether tokens (or images) were cut off (it is counted).
    """
    vocab, per_image = self.vocabulary, self.num_image_tokens
    targets = tf.cast(ex["targets"], tf.int32)                                  # [T]
    weights = tf.cast(ex["loss_weights"], tf.int32)[:tf.size(targets)]
    weights = tf.pad(weights, [[0, tf.size(targets) - tf.size(weights)]])    # only if malformed
    images = ex["images"]
    is_open, is_close = self._slots(targets)
    num_slots = tf.reduce_sum(tf.cast(is_open, tf.int32))
    keep_blocks = tf.minimum(tf.minimum(num_slots, tf.shape(images)[0]), max_images)

    repeats = tf.where(is_open, per_image + 1, 1)
    starts = tf.cumsum(repeats, exclusive=True)          # expanded position of each task token
    source = tf.repeat(tf.range(tf.size(targets)), repeats)      # task token of each position
    tokens = tf.gather(targets, source)                  # [T + slots * per_image]
    weights = tf.gather(weights, source)
    from_open = tf.gather(is_open, source)
    placeholder = from_open & (tf.range(tf.size(tokens)) > tf.gather(starts, source))
    tokens = tf.where(placeholder, vocab.image_placeholder_id, tokens)
    image_structure = (from_open | tf.gather(is_close, source)
                       | tf.equal(tokens, vocab.image_id) | tf.equal(tokens, vocab.end_image_id))
    weights = tf.where(image_structure, 0, weights)

    # Cut at the row length, before the first block beyond the kept images, and never inside
    # a block: a block starting at s spans s .. s + per_image + 1.
    big = np.iinfo(np.int32).max
    block_index = tf.cumsum(tf.cast(is_open, tf.int32)) - 1
    limit = tf.minimum(tf.size(tokens), length)
    first_dropped = is_open & tf.equal(block_index, keep_blocks)
    limit = tf.minimum(limit, tf.reduce_min(tf.where(first_dropped, starts, big)))
    inside = is_open & (starts < limit) & (limit <= starts + per_image + 1)
    limit = tf.minimum(limit, tf.reduce_min(tf.where(inside, starts, big)))
    num_images = tf.reduce_sum(tf.cast(is_open & (starts + per_image + 1 < limit), tf.int32))
    truncated = limit < tf.size(tokens)

    tokens, weights, placeholder = tokens[:limit], weights[:limit], placeholder[:limit]
    inputs = tf.concat([[self.bos_id], tokens], axis=0)[:limit]
    image_tokens = tf.concat([[0], tf.cast(placeholder, tf.int32)], axis=0)[:limit]
    code = tf.where(self._is_consistent(ex, length, max_images),
                    tf.where(tf.reduce_sum(weights) > 0, 0, 2), 1)
    return {"targets": tokens, "inputs": inputs, "loss": weights, "image_tokens": image_tokens,
            "images": images_lib.resize_images(images[:num_images], self.image_size),
            "drop_code": code, "truncated_to_row_length": truncated}


# --- packing -----------------------------------------------------------------------------------

def _single_row(ex) -> dict[str, tf.Tensor]:
  """One example as a row: segment 1, positions from 0."""
  row = {k: ex[k] for k in _EXAMPLE_KEYS}
  row["segments"] = tf.ones_like(ex["targets"])
  row["positions"] = tf.range(tf.size(ex["targets"]), dtype=tf.int32)
  row["images"] = ex["images"]
  return row


def _pad_row(row, length: int, max_images: int, image_size: int) -> dict[str, tf.Tensor]:
  """Pads an unpadded row to `length` tokens and `max_images` images; names model features."""
  def pad(x):
    x = tf.pad(x, [[0, length - tf.size(x)]])
    x.set_shape([length])
    return x
  num_images = tf.shape(row["images"])[0]
  images = tf.pad(row["images"], [[0, max_images - num_images], [0, 0], [0, 0], [0, 0]])
  images.set_shape([max_images, image_size, image_size, 3])
  image_mask = tf.cast(tf.range(max_images) < num_images, tf.int32)
  return {
      "decoder_target_tokens": pad(row["targets"]),
      "decoder_input_tokens": pad(row["inputs"]),
      "decoder_loss_weights": pad(row["loss"]),
      "decoder_segment_ids": pad(row["segments"]),
      "decoder_positions": pad(row["positions"]),
      "decoder_image_token_mask": pad(row["image_tokens"]),
      "images": images,
      "image_mask": image_mask,
  }


def pack_examples(ds: tf.data.Dataset, length: int, max_images: int,
                  image_size: int) -> tf.data.Dataset:
  """Greedy in-order packing: an example joins the open row if its tokens and images fit.

  `ds` holds expanded examples (targets, inputs, loss, image_tokens [t]; images [k, S, S, 3])
  with t <= length and k <= max_images. The open row is the state of a `Dataset.scan`; a
  sentinel after the last example flushes it, so finite datasets lose nothing.
  """
  def with_flag(flush):
    return _plain(lambda ex: {**{k: ex[k] for k in (*_EXAMPLE_KEYS, "images")},
                              "flush": tf.constant(flush)})
  sentinel = {k: tf.zeros([0], tf.int32) for k in _EXAMPLE_KEYS}
  sentinel["images"] = tf.zeros([0, image_size, image_size, 3], tf.uint8)
  ds = ds.map(with_flag(False)).concatenate(
      tf.data.Dataset.from_tensors(sentinel).map(with_flag(True)))

  empty = {k: tf.zeros([0], tf.int32) for k in (*_EXAMPLE_KEYS, "segments", "positions")}
  empty["images"] = tf.zeros([0, image_size, image_size, 3], tf.uint8)
  empty["count"] = tf.constant(0, tf.int32)

  def step(row, ex):
    num_tokens = tf.size(ex["targets"])
    fits = (tf.logical_not(ex["flush"])
            & (tf.size(row["targets"]) + num_tokens <= length)
            & (tf.shape(row["images"])[0] + tf.shape(ex["images"])[0] <= max_images))

    def append():
      new = {k: tf.concat([row[k], ex[k]], axis=0) for k in (*_EXAMPLE_KEYS, "images")}
      new["segments"] = tf.concat([row["segments"], tf.fill([num_tokens], row["count"] + 1)], 0)
      new["positions"] = tf.concat([row["positions"], tf.range(num_tokens, dtype=tf.int32)], 0)
      new["count"] = row["count"] + 1
      return new

    def start_new():
      new = _single_row(ex)
      new["count"] = tf.constant(1, tf.int32)
      return new
    emit = tf.logical_not(fits) & (tf.size(row["targets"]) > 0)
    return tf.cond(fits, append, start_new), (emit, row)

  ds = ds.scan(empty, _plain(step))
  ds = ds.filter(_plain(lambda emit, row: emit))
  return ds.map(_plain(lambda emit, row: _pad_row(row, length, max_images, image_size)),
                num_parallel_calls=tf.data.AUTOTUNE)


def packing_efficiency(batches: Iterable[Mapping[str, np.ndarray]]) -> float:
  """Fraction of non-padding token positions (segment id > 0) over the given batches/rows."""
  real = total = 0
  for batch in batches:
    segments = np.asarray(batch["decoder_segment_ids"])
    real += int((segments > 0).sum())
    total += segments.size
  if total == 0:
    raise ValueError("packing_efficiency: no rows given")
  return real / total
