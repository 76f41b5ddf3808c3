"""A TFDS dataset with image and caption features as an image-caption source.

The builder is read from `data_dir` (prepared beforehand: nothing is downloaded at run time).
Images are read undecoded (`tfds.decode.SkipDecoding`) so they go through the project's one
image recipe; the caption may be a nested feature (`"captions/text"`), and a list of captions
gives the first. TFDS pipelines are tf.data throughout, so their position checkpoints natively.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from kosmos_jax.data import preprocessors as pp
from kosmos_jax.data.sources import records


def _get(features: Mapping, path: str, builder_name: str) -> tf.Tensor:
  value = features
  for part in path.split("/"):
    if not isinstance(value, Mapping) or part not in value:
      raise ValueError(f"tfds {builder_name}: no feature {path!r}; features are "
                       f"{sorted(features)}")
    value = value[part]
  return value


class TfdsImageText(seqio.DataSource):
  """`key`, `image` (encoded bytes) and `text` from a prepared TFDS builder."""

  def __init__(self, builder_name: str, data_dir: Optional[str] = None,
               image_key: str = "image", caption_key: str = "caption",
               splits: Optional[Mapping[str, str]] = None):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    self._tfds = tfds
    self.builder_name, self.data_dir = builder_name, data_dir
    self.image_key, self.caption_key = image_key, caption_key
    self._tfds_splits = dict(splits or {"train": "train", "validation": "validation"})
    super().__init__(splits=self._tfds_splits.keys(), performs_internal_shuffling=True)

  def _builder(self):
    try:
      return self._tfds.builder(self.builder_name, data_dir=self.data_dir)
    except Exception as e:   # pylint: disable=broad-except  (tfds raises several kinds)
      raise ValueError(f"tfds: cannot open builder {self.builder_name!r} in data_dir="
                       f"{self.data_dir!r} ({type(e).__name__}: {e}); prepare it first with "
                       "`tfds build` or builder.download_and_prepare()") from None

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split: str) -> Sequence[str]:
    info = self._builder().info
    return [f"{self.builder_name}/{self._tfds_splits[split]}/{i}"
            for i in range(info.splits[self._tfds_splits[split]].num_shards)]

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None, *, sequence_length=None,
                  use_cached: bool = False, num_epochs: Optional[int] = 1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs   # seqio repeats
    tfds = self._tfds
    builder = self._builder()
    tfds_split = self._tfds_splits[split]
    num_files = builder.info.splits[tfds_split].num_shards
    context, record_shard = None, None
    if shard_info is not None and shard_info.num_shards > 1:
      if num_files >= shard_info.num_shards:
        context = tf.distribute.InputContext(num_input_pipelines=shard_info.num_shards,
                                             input_pipeline_id=shard_info.index)
      else:
        record_shard = shard_info
    # Same file order every epoch: a per-epoch reshuffle keeps its seeds outside the data
    # checkpoint, which would break exact resume.
    read_config = tfds.ReadConfig(input_context=context, add_tfds_id=True,
                                  shuffle_seed=0 if seed is None else seed,
                                  shuffle_reshuffle_each_iteration=False)
    decoders = {self.image_key: tfds.decode.SkipDecoding()}
    ds = builder.as_dataset(split=tfds_split, shuffle_files=shuffle, read_config=read_config,
                            decoders=decoders)
    if record_shard is not None:
      ds = ds.shard(record_shard.num_shards, record_shard.index)
    if shuffle:
      ds = ds.shuffle(10_000, seed=0 if seed is None else seed + 1,
                      reshuffle_each_iteration=False)

    def convert(ex):
      caption = _get(ex, self.caption_key, self.builder_name)
      if caption.shape.rank:
        caption = tf.cond(tf.size(caption) > 0, lambda: tf.reshape(caption, [-1])[0],
                          lambda: tf.constant(""))
      return {"key": ex["tfds_id"], "image": _get(ex, self.image_key, self.builder_name),
              "text": caption}
    ds = ds.map(pp.no_autograph(convert), num_parallel_calls=tf.data.AUTOTUNE)
    return pp.filter_and_count(ds, lambda ex: tf.not_equal(tf.strings.strip(ex["text"]), ""),
                               records.TEXT_REASONS[0])
