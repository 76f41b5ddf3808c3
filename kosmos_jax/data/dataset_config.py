"""What the train / eval entry points need to build a data iterator, as one gin-bound dataclass
(T5X's DatasetConfig). The model-dependent parts (placeholders per image, image size) are not
here: the entry point takes them from the model config so they cannot disagree."""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional

import jax

from kosmos_jax.data import pipeline


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

  @property
  def length(self) -> int:
    return int(self.task_feature_lengths["targets"])

  @property
  def max_images(self) -> int:
    return int(self.task_feature_lengths.get("images", 1))


def make_iterator(config: DatasetConfig, *, num_image_tokens: int, image_size: int,
                  **overrides) -> pipeline.DataIterator:
  """This host's shard of `config` as a checkpointable numpy iterator (batch = global / hosts)."""
  hosts = jax.process_count()
  if config.batch_size % hosts:
    raise ValueError(f"batch_size={config.batch_size} is not divisible by {hosts} hosts")
  kwargs = dict(batch_size=config.batch_size // hosts, length=config.length,
                num_image_tokens=num_image_tokens, image_size=image_size,
                max_images=config.max_images, split=config.split, seed=config.seed,
                shard_index=jax.process_index(), num_shards=hosts, shuffle=config.shuffle,
                num_epochs=config.num_epochs, pack=config.pack)
  kwargs.update(overrides)
  return pipeline.make_iterator(config.mixture_or_task_name, **kwargs)
