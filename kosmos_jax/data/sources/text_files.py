"""Text corpora: `.txt` / `.txt.gz` files (a document per line, or per block of lines separated
by a blank line) and JSONL files (the text in a configurable field), read with tf.data's own
line reader so that their position checkpoints natively. Empty, non-UTF-8 and (JSONL) malformed
or field-less lines are skipped and counted."""
from __future__ import annotations

import json
from typing import Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from kosmos_jax.data import images as images_lib
from kosmos_jax.data import preprocessors as pp
from kosmos_jax.data.sources import records

MODES = ("block", "line")
JSONL_REASONS = ("json_malformed", "json_missing_field", "text_empty")


def _compression(path: tf.Tensor) -> tf.Tensor:
  return tf.where(tf.strings.regex_full_match(path, r".*\.gz"), "GZIP", "")


def _utf8_ok(text: tf.Tensor) -> tf.Tensor:
  """Valid UTF-8 transcodes to itself; invalid bytes would become U+FFFD."""
  return tf.equal(tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace"), text)


def _blocks(lines: tf.data.Dataset) -> tf.data.Dataset:
  """Lines -> blank-line-separated blocks joined by newlines (the last block flushed)."""
  lines = lines.concatenate(tf.data.Dataset.from_tensors(tf.constant("")))

  def step(block, line):
    blank = tf.equal(tf.strings.strip(line), "")
    joined = tf.where(tf.equal(block, ""), line, tf.strings.join([block, line], "\n"))
    return tf.where(blank, "", joined), (block, blank & tf.not_equal(block, ""))
  return lines.scan(tf.constant(""), step).filter(lambda block, done: done).map(
      lambda block, done: block)


class TextFileSource(seqio.DataSource):
  """A seqio DataSource of `text` (and `key` = file:document number) from text or JSONL files."""

  def __init__(self, split_to_filepattern, mode: str = "block", jsonl_field: Optional[str] = None,
               shuffle_buffer_size: int = 10_000, cycle_length: int = 4,
               num_epochs: Optional[int] = None):
    if jsonl_field is None and mode not in MODES:
      raise ValueError(f"text source: mode={mode!r}; choose one of {MODES}")
    super().__init__(splits=split_to_filepattern.keys(), performs_internal_shuffling=True)
    self._patterns = dict(split_to_filepattern)
    self.mode, self.jsonl_field = mode, jsonl_field
    self.shuffle_buffer_size, self.cycle_length = shuffle_buffer_size, cycle_length
    self.num_epochs = num_epochs

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split: str) -> Sequence[str]:
    if split not in self._patterns:
      raise ValueError(f"text source: no split {split!r}; splits are {sorted(self._patterns)}")
    return records.list_files(self._patterns[split], f"text source split {split!r}")

  def _documents(self, path: tf.Tensor) -> tf.data.Dataset:
    lines = tf.data.TextLineDataset(path, compression_type=_compression(path))
    if self.jsonl_field is None and self.mode == "block":
      lines = _blocks(lines)
    else:   # a blank line is a separator, not a document
      lines = lines.filter(lambda line: tf.not_equal(tf.strings.strip(line), ""))
    docs = lines.enumerate()
    return docs.map(lambda i, text: {"key": tf.strings.join([path, tf.strings.as_string(i)], ":"),
                                     "text": text})

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None, *, sequence_length=None,
                  use_cached: bool = False, num_epochs: Optional[int] = 1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs   # epochs: see records.IndexedFileSource
    files = self.list_shards(split)
    seed = records.resolve_seed(seed)
    file_shard, record_shard = records.host_shards(len(files), shard_info)
    ids = records.epoch_file_ids(len(files), shuffle=shuffle, seed=seed,
                                 num_epochs=self.num_epochs, file_shard=file_shard)
    paths = tf.constant(files)
    ds = ids.interleave(pp.no_autograph(lambda i: self._documents(paths[i])),
                        cycle_length=self.cycle_length, block_length=1)
    if record_shard is not None:
      ds = ds.shard(record_shard.num_shards, record_shard.index)
    if shuffle:
      ds = ds.shuffle(self.shuffle_buffer_size, seed=seed + 1, reshuffle_each_iteration=False)
    return self._checked(ds)

  def _checked(self, ds: tf.data.Dataset) -> tf.data.Dataset:
    if self.jsonl_field is not None:
      field = self.jsonl_field

      def parse(line):
        try:
          value = json.loads(images_lib.numpy_bytes(line))
        except (ValueError, UnicodeDecodeError):
          return b"", np.int32(1)
        if not isinstance(value, dict) or not isinstance(value.get(field), str):
          return b"", np.int32(2)
        return value[field].encode(), np.int32(0 if value[field].strip() else 3)

      def to_text(ex):
        text, code = tf.numpy_function(parse, [ex["text"]], (tf.string, tf.int32),
                                       stateful=False)
        text.set_shape([])
        code.set_shape([])
        return {"key": ex["key"], "text": text, "_code": code}
      ds = ds.map(pp.no_autograph(to_text), num_parallel_calls=tf.data.AUTOTUNE)
      ds = pp.filter_by_code(ds, "_code", JSONL_REASONS)
    else:
      def code(ex):
        empty = tf.equal(tf.strings.strip(ex["text"]), "")
        return {**ex, "_code": tf.where(empty, 1, tf.where(_utf8_ok(ex["text"]), 0, 2))}
      ds = pp.filter_by_code(ds.map(pp.no_autograph(code)), "_code", records.TEXT_REASONS)
    return ds.map(pp.no_autograph(lambda ex: {k: v for k, v in ex.items() if k != "_code"}))
