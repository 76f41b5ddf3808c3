"""What the train / eval entry points need to build a data iterator, as one gin-bound dataclass
(T5X's DatasetConfig). The model-dependent parts (placeholders per image, image size) are not
here: the entry point takes them from the model config so they cannot disagree."""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional

import jax

from kosmos_jax.data import pipeline
from kosmos_jax.data import sharded_iterator


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
  mixture_or_task_name: str
  # {"targets": row length in tokens, "images": images per row}
  task_feature_lengths: Mapping[str, int]
  split: str = "train"
  batch_size: int = 8               # global, over all hosts
  shuffle: bool = True
  seed: Optional[int] = 0
  pack: bool = True
  num_epochs: Optional[int] = None  # None: repeat forever (training)
  # Virtual data shards (sharded_iterator.py): the data position then resumes on any number of
  # hosts dividing it. None: one per host (a resume must keep the host count).
  num_data_shards: Optional[int] = None

  @property
  def length(self) -> int:
    return int(self.task_feature_lengths["targets"])

  @property
  def max_images(self) -> int:
    return int(self.task_feature_lengths.get("images", 1))


def make_iterator(config: DatasetConfig, *, num_image_tokens: int, image_size: int,
                  **overrides) -> sharded_iterator.ShardedDataIterator:
  """This host's data shards of `config` as a checkpointable numpy iterator (its rows of the
  global batch). Finite passes (evaluation, `num_epochs` set) read one shard per host."""
  hosts = jax.process_count()
  num_epochs = overrides.get("num_epochs", config.num_epochs)
  shards = config.num_data_shards or hosts
  if num_epochs is not None:
    shards = hosts
  sharded_iterator.check_layout(config.batch_size, shards, hosts)

  def make_shard(index: int, count: int) -> pipeline.DataIterator:
    kwargs = dict(batch_size=config.batch_size // count, length=config.length,
                  num_image_tokens=num_image_tokens, image_size=image_size,
                  max_images=config.max_images, split=config.split, seed=config.seed,
                  shard_index=index, num_shards=count, shuffle=config.shuffle,
                  num_epochs=config.num_epochs, pack=config.pack)
    kwargs.update(overrides)
    return pipeline.make_iterator(config.mixture_or_task_name, **kwargs)
  return sharded_iterator.ShardedDataIterator(make_shard, num_data_shards=shards,
                                              process_index=jax.process_index(),
                                              process_count=hosts)
