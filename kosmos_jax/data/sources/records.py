"""Checkpointable streaming over files of records: the engine under every file-based source.

A `RecordFormat` knows how to count the records of one file and read record i of it (in Python:
tar members, parquet rows, JSON lines). `IndexedFileSource` turns that into a seqio DataSource
whose tf.data pipeline holds only tf state, so a data checkpoint (the tf.data iterator) records
the exact position, shuffle buffers included, and a resumed run reads exactly what an
uninterrupted one would (docs/data.md §8):

  file ids -> host shard -> epoch after epoch, each in its own seeded order
    -> interleave `cycle_length` files, each `range(count(file))`   # (file id, record index)
    -> [record-level host shard when there are fewer files than hosts]
    -> shuffle buffer of (file, record) pairs (cheap: two ints, not decoded images)
    -> read(file, record) in parallel -> drop unusable records, counted by reason

Reading is a pure function of (file, record), so it may run in `tf.numpy_function`; the
iterator checkpoint only has to hold the pairs.
"""
from __future__ import annotations

import abc
import logging
import threading
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import seqio
import tensorflow as tf

from kosmos_jax import paths
from kosmos_jax.data import preprocessors as pp

FilePatterns = Union[str, Sequence[str]]
READ_FAILED = "record_unreadable"    # an unexpected error reading one record
FILE_FAILED = "file_unreadable"      # a file whose records cannot be listed
FILE_DAMAGED = "file_damaged"        # a file read up to damage (its complete records are kept)
_DAMAGED_FILES = threading.local()
_WARNED = set()
_WARN_LOCK = threading.Lock()


def count_damaged_file() -> None:
  """Called by a format while counting a file's records: the file is damaged but its complete
  records are kept; `record_pairs` adds it to the `file_damaged` counter."""
  _DAMAGED_FILES.count = getattr(_DAMAGED_FILES, "count", 0) + 1


def _take_damaged_count() -> int:
  count = getattr(_DAMAGED_FILES, "count", 0)
  _DAMAGED_FILES.count = 0
  return count


class SkipRecord(Exception):
  """Raised by `RecordFormat.read` for a record that cannot be used; `reason` is counted."""

  def __init__(self, reason: str):
    super().__init__(reason)
    self.reason = reason


def warn_once(what: str, detail: str) -> None:
  """Logs the first occurrence of each kind of problem (the counters carry the totals)."""
  with _WARN_LOCK:
    if what in _WARNED:
      return
    _WARNED.add(what)
  logging.warning("data: %s (%s); further ones are only counted", what, detail)


class RecordFormat(abc.ABC):
  """One file layout: what a record holds, why one can be skipped, and how to read it."""

  # Skip reasons `read` may raise (SkipRecord) and per-record tallies it may return.
  reasons: tuple[str, ...] = ()
  tallies: tuple[str, ...] = ()

  @property
  @abc.abstractmethod
  def features(self) -> Mapping[str, tf.TensorSpec]:
    """Feature name -> spec of what `read` returns (always including a string "key")."""

  @abc.abstractmethod
  def num_records(self, path: str) -> int:
    """How many records file `path` holds (an index may be built and cached here)."""

  @abc.abstractmethod
  def read(self, path: str, index: int) -> tuple[dict[str, Any], Mapping[str, int]]:
    """Record `index` of `path` -> (features, tallies by name); SkipRecord if unusable."""


def open_file(path: str, mode: str = "rb"):
  """A file object: Python's own for local paths (several times faster per small read than
  tf.io.gfile), tf.io.gfile for remote ones (gs://, s3://, ...)."""
  if paths.is_remote(path):
    return tf.io.gfile.GFile(path, mode)
  return open(path, mode)  # pylint: disable=consider-using-with  (callers close it)


def list_files(patterns: FilePatterns, what: str) -> list[str]:
  """Sorted files matching glob pattern(s) (local or gs://); an error names the pattern."""
  patterns = [patterns] if isinstance(patterns, str) else list(patterns)
  files = sorted({f for pattern in patterns for f in tf.io.gfile.glob(pattern)})
  if not files:
    raise ValueError(f"{what}: no files match {patterns}; check the path (relative paths are "
                     "read from the working directory)")
  return files


def _empty_like(spec: tf.TensorSpec) -> np.ndarray:
  shape = [0 if d is None else d for d in spec.shape.as_list()]
  if spec.dtype == tf.string:
    return np.full(shape, b"", dtype=object)
  return np.zeros(shape, spec.dtype.as_numpy_dtype)


class IndexedFileSource(seqio.DataSource):
  """A seqio DataSource over files of a `RecordFormat` (see the module docstring).

  Shuffled, it is a stream of `num_epochs` epochs (None: endless), each in a new order that the
  data checkpoint resumes exactly; unshuffled, one pass in file order (evaluation, inspection).
  """

  def __init__(self, split_to_filepattern: Mapping[str, FilePatterns], record_format: RecordFormat,
               shuffle_buffer_size: int = 10_000, cycle_length: int = 4,
               name: Optional[str] = None, num_epochs: Optional[int] = None):
    if shuffle_buffer_size < 1 or cycle_length < 1:
      raise ValueError(f"{name or type(record_format).__name__}: shuffle_buffer_size="
                       f"{shuffle_buffer_size} and cycle_length={cycle_length} must be >= 1")
    super().__init__(splits=split_to_filepattern.keys(), performs_internal_shuffling=True)
    self._patterns = dict(split_to_filepattern)
    self.record_format = record_format
    self.shuffle_buffer_size = shuffle_buffer_size
    self.cycle_length = cycle_length
    self.name = name or type(record_format).__name__
    self.num_epochs = num_epochs

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True   # file-level when there are enough files, record-level otherwise

  def list_shards(self, split: str) -> Sequence[str]:
    if split not in self._patterns:
      raise ValueError(f"{self.name}: no split {split!r}; splits are {sorted(self._patterns)}")
    return list_files(self._patterns[split], f"{self.name} split {split!r}")

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None, *, sequence_length=None,
                  use_cached: bool = False, num_epochs: Optional[int] = 1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs   # seqio's own; see the class docstring
    files = self.list_shards(split)
    seed = resolve_seed(seed)
    pairs = record_pairs(len(files), self._counter(files), shuffle=shuffle, seed=seed,
                         shard_info=shard_info, cycle_length=self.cycle_length,
                         num_epochs=self.num_epochs)
    if shuffle:
      pairs = pairs.shuffle(self.shuffle_buffer_size, seed=seed + 1,
                            reshuffle_each_iteration=False)
    ds = pairs.map(self._reader(files), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.with_options(pp.stateful_pipeline_options())
    ds = count_tallies(ds, self.record_format.tallies)
    ds = pp.filter_by_code(ds, "_code", self.record_format.reasons + (READ_FAILED,))
    return ds.map(pp.no_autograph(lambda ex: {k: v for k, v in ex.items() if k != "_code"}))

  def _counter(self, files: Sequence[str]):
    def count(file_id):
      """(records, unreadable 0/1, damaged 0/1) of one file."""
      path = files[int(file_id)]
      _take_damaged_count()
      try:
        count = self.record_format.num_records(path)
        return np.int64(count), np.int64(0), np.int64(min(1, _take_damaged_count()))
      except Exception as e:   # pylint: disable=broad-except  (a broken file must not stop a run)
        warn_once(f"{self.name}: cannot list the records of a file", f"{path}: {e}")
        return np.int64(0), np.int64(1), np.int64(0)
    return count

  def _reader(self, files: Sequence[str]):
    """(file id, record) -> feature dict with `_code` (0, or 1 + index of the skip reason)."""
    fmt = self.record_format
    names, specs = list(fmt.features), list(fmt.features.values())
    reasons = fmt.reasons + (READ_FAILED,)

    def read(file_id, record):
      path = files[int(file_id)]
      tallies = np.zeros([len(fmt.tallies)], np.int64)
      try:
        features, counts = fmt.read(path, int(record))
        for name, n in counts.items():
          tallies[fmt.tallies.index(name)] += n
        values = [np.asarray(features[n], dtype=object if s.dtype == tf.string
                             else s.dtype.as_numpy_dtype) for n, s in zip(names, specs)]
        code = 0
      except SkipRecord as e:
        values, code = [_empty_like(s) for s in specs], reasons.index(e.reason) + 1
      except Exception as e:   # pylint: disable=broad-except  (one bad record never stops a run)
        warn_once(f"{self.name}: unreadable record", f"{path} record {int(record)}: {e!r}")
        values, code = [_empty_like(s) for s in specs], len(reasons)
      return (*values, tallies, np.int32(code))

    def map_fn(file_id, record):
      out = tf.numpy_function(read, [file_id, record],
                              [s.dtype for s in specs] + [tf.int64, tf.int32], stateful=False)
      ex = {}
      for name, spec, value in zip(names, specs, out):
        value.set_shape(spec.shape)
        ex[name] = value
      out[-2].set_shape([len(fmt.tallies)])
      out[-1].set_shape([])
      ex["_tallies"], ex["_code"] = out[-2], out[-1]
      return ex
    return pp.no_autograph(map_fn)


def resolve_seed(seed: Optional[int]) -> int:
  """A shuffle seed: the given one, or (None) one drawn now, fixed for this dataset."""
  return int(np.random.SeedSequence().generate_state(1)[0]) if seed is None else int(seed)


def epoch_file_ids(num_files: int, *, shuffle: bool, seed: int, num_epochs: Optional[int],
                   file_shard: Optional[seqio.ShardInfo]) -> tf.data.Dataset:
  """File ids epoch after epoch, each epoch in the order `stateless_shuffle(seed, epoch)`.

  The order is a pure function of (seed, epoch), so the tf.data checkpoint (which holds the
  epoch counter) resumes it exactly; `Dataset.shuffle(reshuffle_each_iteration=True)` would
  keep its per-epoch seeds outside the checkpoint. Unshuffled: one epoch in file order.
  """
  ids = np.arange(num_files, dtype=np.int64)
  if file_shard is not None:
    ids = ids[file_shard.index::file_shard.num_shards]
  ids = tf.constant(ids)
  if not shuffle:
    return tf.data.Dataset.from_tensor_slices(ids)
  epochs = tf.data.Dataset.range(num_epochs if num_epochs else 2**62)

  def order(epoch):
    return tf.data.Dataset.from_tensor_slices(
        tf.random.experimental.stateless_shuffle(ids, seed=tf.stack([seed, epoch])))
  return epochs.flat_map(order)


def host_shards(num_files: int, shard_info: Optional[seqio.ShardInfo]):
  """(file-level shard, record-level shard): by file when there are at least as many files as
  shards, else every shard walks all files and keeps every n-th record."""
  if shard_info is None or shard_info.num_shards <= 1:
    return None, None
  if num_files >= shard_info.num_shards:
    return shard_info, None
  return None, shard_info


def record_pairs(num_files: int, count_fn, *, shuffle: bool, seed: int,
                 shard_info: Optional[seqio.ShardInfo], cycle_length: int,
                 num_epochs: Optional[int]) -> tf.data.Dataset:
  """(file id, record index) pairs of this host's shard; see the module docstring."""
  file_shard, record_shard = host_shards(num_files, shard_info)
  file_ids = epoch_file_ids(num_files, shuffle=shuffle, seed=seed, num_epochs=num_epochs,
                            file_shard=file_shard)
  unreadable, damaged = pp.record_counter(FILE_FAILED), pp.record_counter(FILE_DAMAGED)

  def records_of(file_id):
    count, failed, broken = tf.numpy_function(count_fn, [file_id], (tf.int64,) * 3,
                                              stateful=False)
    count.set_shape([])
    with tf.control_dependencies([unreadable.assign_add(failed), damaged.assign_add(broken)]):
      count = tf.identity(count)
    return tf.data.Dataset.range(count).map(lambda record: (file_id, record))
  pairs = file_ids.interleave(pp.no_autograph(records_of), cycle_length=cycle_length,
                              block_length=1)
  if record_shard is not None:
    pairs = pairs.shard(record_shard.num_shards, record_shard.index)
  return pairs.with_options(pp.stateful_pipeline_options())


def count_tallies(ds: tf.data.Dataset, tallies: Sequence[str]) -> tf.data.Dataset:
  """Adds each record's `_tallies` (items dropped inside a kept record, e.g. one missing image
  of a document) to the counters named `tallies`, and removes the feature."""
  counters = [pp.record_counter(name) for name in tallies]

  def add(ex):
    ex = dict(ex)
    tally = ex.pop("_tallies")
    updates = [counter.assign_add(tally[i]) for i, counter in enumerate(counters)]
    with tf.control_dependencies(updates):
      return {k: tf.identity(v) for k, v in ex.items()}
  return ds.map(pp.no_autograph(add)).with_options(pp.stateful_pipeline_options())


def check_text(value: Any) -> str:
  """A record's text as str; SkipRecord("text_empty" / "text_not_utf8") when unusable."""
  if value is None:
    raise SkipRecord("text_empty")
  if isinstance(value, bytes):
    try:
      value = value.decode("utf-8")
    except UnicodeDecodeError:
      raise SkipRecord("text_not_utf8") from None
  if not isinstance(value, str) or not value.strip():
    raise SkipRecord("text_empty")
  return value


TEXT_REASONS = ("text_empty", "text_not_utf8")
