"""The trainer's entry point to data: batched model features of a mixture, as numpy, resumable.

  it = make_iterator("shapes_pretrain", batch_size=8, length=256, num_image_tokens=8,
                     image_size=32, max_images=16, seed=0, shard_index=host, num_shards=hosts)
  batch = next(it)                 # dict of numpy arrays, the model features
  path = it.save(directory)        # data position + dropped-record counters
  it.restore(path)                 # on a freshly built iterator with the same arguments

With N host shards every host reads a disjoint part of each task (sharding happens before
shuffling, mixing and packing); the same seed gives the same batches.
"""
from __future__ import annotations

import difflib
import os
import re
from typing import Optional, Union

import gin
import numpy as np
import seqio
import tensorflow as tf

from kosmos_jax.data import preprocessors
from kosmos_jax.data.feature_converters import KosmosFeatureConverter, task_feature_lengths


def get_mixture_or_task(name: str) -> Union[seqio.Task, seqio.Mixture]:
  """The registered SeqIO task or mixture `name`; an unknown name is an error listing the
  closest registered names."""
  names = list(seqio.TaskRegistry.names()) + list(seqio.MixtureRegistry.names())
  if name not in names:
    close = difflib.get_close_matches(str(name), names, n=5, cutoff=0.4)
    hint = f"closest registered: {', '.join(close)}" if close else f"{len(names)} are registered"
    raise ValueError(f"no SeqIO task or mixture named {name!r} ({hint}); register it from gin "
                     "(e.g. image_text_task.name) or import the module that does")
  return seqio.get_mixture_or_task(name)


@gin.configurable
def get_dataset(mixture_or_task_name: str, *, batch_size: int, length: int,
                num_image_tokens: int, image_size: int, max_images: int, split: str = "train",
                seed: Optional[int] = 0, shard_index: int = 0, num_shards: int = 1,
                shuffle: bool = True, num_epochs: Optional[int] = None, pack: bool = True,
                drop_remainder: bool = True) -> tf.data.Dataset:
  """Batched model features [batch_size, ...] for one host shard of a registered mixture/task.

  num_epochs=None repeats forever (training); 1 gives one pass (evaluation; the last rows are
  flushed and a partial batch is kept unless drop_remainder).
  """
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} must be >= 1")
  if not 0 <= shard_index < num_shards:
    raise ValueError(f"shard_index={shard_index} must be in [0, num_shards={num_shards})")
  provider = get_mixture_or_task(mixture_or_task_name)
  vocabulary = provider.output_features["targets"].vocabulary
  # The converter sets static shapes on every model feature, so seqio's run-time length
  # assertions would only repeat them.
  converter = KosmosFeatureConverter(vocabulary, num_image_tokens=num_image_tokens,
                                     image_size=image_size, pack=pack, apply_length_check=False)
  lengths = task_feature_lengths(length, max_images)
  ds = provider.get_dataset(sequence_length=lengths, split=split, shuffle=shuffle, seed=seed,
                            shard_info=seqio.ShardInfo(shard_index, num_shards),
                            num_epochs=num_epochs, try_in_mem_cache=False)
  ds = converter(ds, lengths)
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  return ds.prefetch(tf.data.AUTOTUNE)


class DataIterator:
  """Numpy batches from a tf.data pipeline, with a checkpointable position."""

  def __init__(self, dataset: tf.data.Dataset):
    self.dataset = dataset
    self.tf_iterator = iter(dataset)

  def __iter__(self) -> "DataIterator":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in next(self.tf_iterator).items()}

  def checkpoint(self) -> tf.train.Checkpoint:
    """`tf.train.Checkpoint` of the iterator position and the dropped-record counters."""
    counters = {re.sub(r"\W", "_", name): variable
                for name, variable in preprocessors.counter_variables().items()}
    return tf.train.Checkpoint(iterator=self.tf_iterator, counters=tf.train.Checkpoint(**counters))

  def save(self, directory: str, name: str = "data") -> str:
    """Writes the position under `directory`; returns the checkpoint path to restore."""
    return self.checkpoint().write(os.path.join(directory, name))

  def restore(self, path: str) -> None:
    """Continues from a position saved by an iterator built with the same arguments."""
    self.checkpoint().read(path).expect_partial()


@gin.configurable
def make_iterator(mixture_or_task_name: str, **kwargs) -> DataIterator:
  """`DataIterator(get_dataset(...))`; see `get_dataset` for the arguments."""
  return DataIterator(get_dataset(mixture_or_task_name, **kwargs))
