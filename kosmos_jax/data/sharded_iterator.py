"""The training data stream as a fixed number of virtual data shards, so that its position does
not depend on how many hosts read it (docs/training.md §10).

The global stream is `num_data_shards` (V) independent pipelines: shard v reads ShardInfo(v, V)
of every task, mixes, packs rows with their images and batches B / V rows per step. The global
batch of a step is shard 0's rows, then shard 1's, ...; a host owns V / hosts consecutive shards
and its local batch is their rows in order, so the global batch is the same on any number of
hosts that divides V. Each shard checkpoints its own tf.data iterator (`shard_<v>`), written
by its owner; a run on another host count restores the shards it now owns. Packed rows stay
exact because packing happens inside each shard.

  it = ShardedDataIterator(make_shard, num_data_shards=8, process_index=0, process_count=2)
  batch = next(it)         # this host's rows: shards 0..3, B / 8 rows each
"""
from __future__ import annotations

import json
import logging
import os
from typing import Callable

import numpy as np
import tensorflow as tf

from kosmos_jax.data import pipeline
from kosmos_jax.data import preprocessors as pp

COUNTERS_FILE = "counters_process_{}.json"
LAYOUT_FILE = "layout.json"


def check_layout(global_batch: int, num_data_shards: int, process_count: int) -> None:
  """One line naming what does not divide what, and how to fix it."""
  if num_data_shards < 1 or global_batch % num_data_shards:
    raise ValueError(f"DatasetConfig.num_data_shards={num_data_shards} must divide the global "
                     f"batch_size={global_batch}: choose a divisor of the batch")
  if num_data_shards % process_count:
    raise ValueError(f"DatasetConfig.num_data_shards={num_data_shards} is not a multiple of the "
                     f"{process_count} processes: each host must own the same number of data "
                     f"shards (e.g. num_data_shards={process_count * max(1, num_data_shards // process_count)})")


class ShardedDataIterator:
  """This host's consecutive virtual shards, batches concatenated in shard order."""

  host_independent = True   # its checkpoint restores on any process count (see Checkpointer)

  def __init__(self, make_shard: Callable[[int, int], pipeline.DataIterator], *,
               num_data_shards: int, process_index: int, process_count: int):
    if num_data_shards % process_count:
      raise ValueError(f"num_data_shards={num_data_shards} is not a multiple of "
                       f"process_count={process_count}")
    per_host = num_data_shards // process_count
    self.num_data_shards = num_data_shards
    self.process_index, self.process_count = process_index, process_count
    self.shard_ids = list(range(process_index * per_host, (process_index + 1) * per_host))
    self.shards = [make_shard(v, num_data_shards) for v in self.shard_ids]

  def __iter__(self) -> "ShardedDataIterator":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batches = [next(shard) for shard in self.shards]
    if len(batches) == 1:
      return batches[0]
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}

  def save(self, directory: str) -> str:
    """Writes each owned shard's position and this process's skip counters under `directory`
    (shared by all processes); returns `directory`."""
    for v, shard in zip(self.shard_ids, self.shards):
      tf.train.Checkpoint(iterator=shard.tf_iterator).write(os.path.join(directory, f"shard_{v}"))
    with tf.io.gfile.GFile(os.path.join(directory, COUNTERS_FILE.format(self.process_index)),
                           "w") as f:
      json.dump({name: int(var.numpy()) for name, var in pp.counter_variables().items()}, f)
    if self.process_index == 0:
      with tf.io.gfile.GFile(os.path.join(directory, LAYOUT_FILE), "w") as f:
        json.dump({"num_data_shards": self.num_data_shards,
                   "process_count": self.process_count}, f)
    return directory

  def restore(self, directory: str) -> None:
    """Continues every owned shard where it was saved, on any process count dividing V.

    Skip counters: with the same process count each process gets its own back; otherwise
    process 0 gets the sum of all (so the run's totals stay exact) and the others start at 0.
    """
    with tf.io.gfile.GFile(os.path.join(directory, LAYOUT_FILE)) as f:
      layout = json.load(f)
    if layout["num_data_shards"] != self.num_data_shards:
      raise ValueError(f"the data position was saved with num_data_shards="
                       f"{layout['num_data_shards']}, this run has {self.num_data_shards}; keep "
                       "DatasetConfig.num_data_shards for the whole run")
    for v, shard in zip(self.shard_ids, self.shards):
      tf.train.Checkpoint(iterator=shard.tf_iterator).read(
          os.path.join(directory, f"shard_{v}")).expect_partial()
    self._restore_counters(directory, layout["process_count"])

  def _restore_counters(self, directory: str, saved_processes: int) -> None:
    if saved_processes == self.process_count:
      sources = [self.process_index]
    elif self.process_index == 0:
      sources = list(range(saved_processes))
    else:
      sources = []
    totals: dict[str, int] = {}
    for p in sources:
      path = os.path.join(directory, COUNTERS_FILE.format(p))
      if not tf.io.gfile.exists(path):
        logging.warning("data: no skip counters of process %d at %s; they restart at 0", p, path)
        continue
      with tf.io.gfile.GFile(path) as f:
        for name, value in json.load(f).items():
          totals[name] = totals.get(name, 0) + int(value)
    for name, value in totals.items():
      pp.record_counter(name).assign(value)
