"""Registered tasks and mixtures end to end: token proportions, determinism, host sharding,
packing efficiency, and registering a data team's task from gin."""
import importlib

import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf

from kosmos_jax.data import feature_converters as fc
from kosmos_jax.data import pipeline
from kosmos_jax.data import synthetic as syn
from kosmos_jax.data import tasks

NUM_IMAGE_TOKENS = tasks.SHAPES_NUM_IMAGE_TOKENS     # 8, the `tiny` preset


def segment_kinds(batch, image_id):
  """Tokens per kind in a packed batch: text (no image), caption (starts with <image>),
  interleaved (images after text)."""
  tokens = {"text": 0, "caption": 0, "interleaved": 0}
  for row in range(batch["decoder_segment_ids"].shape[0]):
    segments = batch["decoder_segment_ids"][row]
    for segment in range(1, segments.max() + 1):
      where = segments == segment
      has_image = batch["decoder_image_token_mask"][row][where].any()
      first = batch["decoder_target_tokens"][row][where][0]
      kind = "text" if not has_image else ("caption" if first == image_id else "interleaved")
      tokens[kind] += int(where.sum())
  return tokens


def image_keys(batch):
  """A hashable key per real image (the noisy pixels make each image unique)."""
  keys = []
  for row in range(batch["images"].shape[0]):
    for k in range(int(batch["image_mask"][row].sum())):
      keys.append(batch["images"][row, k].tobytes())
  return keys


def caption_image_keys(batch, image_id):
  """Keys of the images of caption examples (one caption per image in the shapes world;
  interleaved documents reuse pool images, so only captions identify records)."""
  keys = []
  for row in range(batch["images"].shape[0]):
    segments, mask = batch["decoder_segment_ids"][row], batch["decoder_image_token_mask"][row]
    run_starts = np.flatnonzero(np.diff(np.concatenate([[0], mask])) == 1)
    for segment in range(1, segments.max() + 1):
      start = np.flatnonzero(segments == segment)[0]
      if batch["decoder_target_tokens"][row][start] == image_id:
        keys.append(batch["images"][row, np.searchsorted(run_starts, start)].tobytes())
  return keys


def shapes_iterator(name="shapes_pretrain", **kwargs):
  settings = dict(batch_size=4, length=256, num_image_tokens=NUM_IMAGE_TOKENS, image_size=32,
                  max_images=16, seed=0)
  settings.update(kwargs)
  return pipeline.make_iterator(name, **settings)


def test_reimport_keeps_registrations():
  importlib.reload(tasks)
  for name in list(tasks.SHAPES_TASKS.values()) + ["shapes_pretrain", "shapes_all"]:
    assert name in seqio.TaskRegistry.names() or name in seqio.MixtureRegistry.names()
  assert isinstance(seqio.get_mixture_or_task("shapes_vqa").output_features["targets"]
                    .vocabulary, syn.ShapesVocabulary)


@pytest.fixture(scope="module")
def pretrain_batches():
  """200 batches of host shard 0 (of 2) of the text/caption/interleaved mixture, seed 0."""
  iterator = shapes_iterator(batch_size=2, num_shards=2, shard_index=0)
  return [next(iterator) for _ in range(200)]


def test_mixture_token_proportions(pretrain_batches):
  vocab = seqio.get_mixture_or_task("shapes_pretrain").output_features["targets"].vocabulary
  shares = {"text": 0.5, "caption": 0.5, "interleaved": 0.2}      # the paper's tokens per step
  tokens = {kind: 0 for kind in shares}
  for batch in pretrain_batches:
    for kind, count in segment_kinds(batch, vocab.image_id).items():
      tokens[kind] += count
  total = sum(tokens.values())
  measured = {kind: tokens[kind] / total for kind in shares}
  print("token shares over 200 batches:", measured)
  for kind, share in shares.items():
    assert measured[kind] == pytest.approx(share / sum(shares.values()), rel=0.10), measured


def test_mixture_is_deterministic_and_host_shards_are_disjoint(pretrain_batches):
  again = shapes_iterator(batch_size=2, num_shards=2, shard_index=0)
  for want in pretrain_batches[:2]:
    got = next(again)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  vocab = seqio.get_mixture_or_task("shapes_pretrain").output_features["targets"].vocabulary
  shard0 = {key for batch in pretrain_batches for key in caption_image_keys(batch, vocab.image_id)}
  other = shapes_iterator(batch_size=2, num_shards=2, shard_index=1)
  shard1 = {key for _ in range(60) for key in caption_image_keys(next(other), vocab.image_id)}
  assert len(shard0) > 500 and len(shard1) > 150 and not shard0 & shard1


def test_interleave_by_rate_keeps_every_prefix_in_proportion():
  datasets = [tf.data.Dataset.from_tensors(tf.constant(i, tf.int64)).repeat() for i in range(3)]
  rates = [5.0, 3.0, 2.0]
  picks = list(tasks.interleave_by_rate(datasets, rates).take(400).as_numpy_iterator())
  for n in range(1, 401):
    counts = np.bincount(picks[:n], minlength=3)
    assert np.abs(counts - n * np.array(rates) / 10).max() <= 1.0, (n, counts)
  with pytest.raises(ValueError, match="positive"):
    tasks.interleave_by_rate(datasets, [1.0, 0.0, 1.0])


def test_host_shards_partition_a_split():
  """One pass over (a small world's) validation captions with 2 shards: each image once."""
  small = syn.WorldConfig(seed=9, train_images=100, eval_images=150, train_documents=10,
                          eval_documents=10, train_text_documents=10, eval_text_documents=10)
  names = tasks.register_shapes_tasks(small, prefix="shapes_small")
  seen = []
  for index in range(2):
    ds = pipeline.get_dataset(names["captions"], split="validation", batch_size=8, length=256,
                              num_image_tokens=NUM_IMAGE_TOKENS, image_size=32, max_images=16,
                              seed=0, shard_index=index, num_shards=2, num_epochs=1,
                              drop_remainder=False)
    for batch in ds.as_numpy_iterator():
      seen += image_keys(batch)
  expected = {image.tobytes() for image in syn.split_data(small, "validation").images}
  assert len(seen) == len(expected) and set(seen) == expected


@pytest.mark.parametrize("num_image_tokens,max_images", [
    (64, 8),                                              # the paper's 64 latents, ~84 tokens
    pytest.param(8, 32, marks=pytest.mark.slow)])         # the tiny preset, ~28 tokens
def test_caption_packing_efficiency_at_512(num_image_tokens, max_images):
  iterator = shapes_iterator("shapes_captions", batch_size=8, length=512,
                             num_image_tokens=num_image_tokens, max_images=max_images)
  efficiency = fc.packing_efficiency(next(iterator) for _ in range(12))
  print(f"caption packing efficiency at 512, {num_image_tokens} image tokens: {efficiency:.3f}")
  assert efficiency >= 0.90


def write_tfrecord(path, examples):
  with tf.io.TFRecordWriter(path) as writer:
    for example in examples:
      features = {}
      for key, value in example.items():
        if isinstance(value, bytes):
          features[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
        elif isinstance(value[0], bytes):
          features[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=list(value)))
        else:
          features[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=list(value)))
      writer.write(tf.train.Example(features=tf.train.Features(feature=features))
                   .SerializeToString())


def test_data_team_task_and_mixture_from_gin(tmp_path, small_vocab):
  """Caption and interleaved tasks over TFRecords of encoded images, registered from gin."""
  from kosmos_jax.data import preprocessors as pp
  rng = np.random.RandomState(0)
  png = lambda: tf.io.encode_png(rng.randint(0, 255, (48, 40, 3)).astype(np.uint8)).numpy()
  captions_file = str(tmp_path / "captions.tfrecord")
  write_tfrecord(captions_file, [{"jpg": png(), "txt": c.encode()} for c in
                                 ["a red circle", "the blue square", "green", "a cross"]])
  docs_file = str(tmp_path / "docs.tfrecord")
  docs = [{"texts": [b"here is a photo.", b"a red circle."], "images": [png(), png()],
           "index": [0, 1]} for _ in range(4)]
  docs[2]["images"][1] = b"not an image"                  # dropped and counted
  write_tfrecord(docs_file, docs)
  config = f"""
      import kosmos_jax.data.tasks
      team/KosmosVocabulary.sentencepiece_model_file = "{small_vocab.sentencepiece_model_file}"

      laion/tfexample_source.split_to_filepattern = {{"train": "{captions_file}"}}
      laion/tfexample_source.features = {{"jpg": "bytes", "txt": "bytes"}}
      laion/image_text_task.name = "team_captions"
      laion/image_text_task.source = @laion/tfexample_source()
      laion/image_text_task.vocabulary = @team/KosmosVocabulary()
      laion/image_text_task.image_key = "jpg"
      laion/image_text_task.text_key = "txt"
      laion/image_text_task.image_size = 32

      mmc4/tfexample_source.split_to_filepattern = {{"train": "{docs_file}"}}
      mmc4/tfexample_source.features = {{
          "texts": "bytes_list", "images": "bytes_list", "index": "int_list"}}
      mmc4/interleaved_task.name = "team_docs"
      mmc4/interleaved_task.source = @mmc4/tfexample_source()
      mmc4/interleaved_task.vocabulary = @team/KosmosVocabulary()
      mmc4/interleaved_task.image_index_key = "index"
      mmc4/interleaved_task.image_size = 32

      token_mixture.name = "team_mix"
      token_mixture.tokens_per_step = [(@laion/image_text_task(), 0.5e6),
                                        (@mmc4/interleaved_task(), 0.2e6)]
      token_mixture.num_image_tokens = 4
      make_iterator.mixture_or_task_name = @token_mixture()
      make_iterator.batch_size = 2
      make_iterator.length = 64
      make_iterator.num_image_tokens = 4
      make_iterator.image_size = 16
      make_iterator.max_images = 4
  """
  before = pp.record_counts().get("image_corrupt", 0)
  gin.clear_config()
  try:
    gin.parse_config(config)
    iterator = pipeline.make_iterator()
    batches = [next(iterator) for _ in range(4)]
  finally:
    gin.clear_config()
  assert {"team_captions", "team_docs"} <= set(seqio.TaskRegistry.names())
  assert "team_mix" in seqio.MixtureRegistry.names()
  assert batches[0]["images"].shape == (2, 4, 16, 16, 3)
  assert all(b["image_mask"].sum() > 0 for b in batches)
  assert pp.record_counts()["image_corrupt"] - before >= 1
  # Rates are tokens per step / mean tokens per example, image placeholders included.
  rates = tasks.token_rates({"team_captions": 3.0, "team_docs": 1.0}, num_image_tokens=4)
  caption_tokens = tasks.mean_model_tokens("team_captions", 4)
  assert caption_tokens - tasks.mean_model_tokens("team_captions", 0) == pytest.approx(4)
  assert rates["team_captions"] == pytest.approx(3.0 / caption_tokens)
  assert rates["team_docs"] == pytest.approx(1.0 / tasks.mean_model_tokens("team_docs", 4))


def test_tfexample_source_rejects_unknown_types():
  with pytest.raises(ValueError, match="unknown feature types"):
    tasks.tfexample_source({"train": "x"}, {"a": "jpeg"})
