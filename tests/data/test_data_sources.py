"""Every data source on files written in its exact layout (real writers where they exist, and
img2dataset's own output as a fixture): round trips, host sharding, seeded shuffling, skip
counters, and an exact mid-epoch resume from a tf.data checkpoint."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from kosmos_jax.data import preprocessors as pp
from kosmos_jax.data import sources
from tests.data import layouts

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "img2dataset")


def delivered(source, split="train", **kwargs):
  kwargs.setdefault("shuffle", False)
  return list(source.get_dataset(split, **kwargs).as_numpy_iterator())


def counts_delta(before, reason):
  return pp.record_counts().get(reason, 0) - before.get(reason, 0)


def caption_shards(tmp_path, num_shards=3, per_shard=4):
  jpeg = layouts.encode(layouts.photo("coffee.png").convert("RGB"), "JPEG")
  expected = {}
  for shard in range(num_shards):
    samples = []
    for i in range(per_shard):
      key = f"{shard:05d}{i:04d}"
      expected[key] = f"caption {shard} {i}"
      samples.append(layouts.img2dataset_sample(key, jpeg, expected[key]))
    layouts.write_webdataset(str(tmp_path / f"{shard:05d}.tar"), samples)
  return expected, jpeg


def test_img2dataset_own_output_is_read_in_both_layouts():
  """The fixture is img2dataset 1.47's output for 8 URLs (one 404, one non-image)."""
  stats = json.load(open(os.path.join(FIXTURE, "webdataset", "00000_stats.json")))
  import pyarrow.parquet as pq
  rows = pq.read_table(os.path.join(FIXTURE, "parquet", "00000.parquet")).to_pylist()
  good = {r["key"]: r["caption"] for r in rows if r["status"] == "success"}
  assert len(good) == stats["successes"] == 6
  wds = delivered(sources.webdataset_source(os.path.join(FIXTURE, "webdataset", "*.tar")))
  assert {ex["key"].decode(): ex["text"].decode() for ex in wds} == good
  before = pp.record_counts()
  parquet = delivered(sources.img2dataset_parquet_source(
      os.path.join(FIXTURE, "parquet", "*.parquet")))
  assert {ex["key"].decode(): ex["text"].decode() for ex in parquet} == good
  assert counts_delta(before, "status_not_success") == 2
  by_key = {r["key"]: r["jpg"] for r in rows}
  assert all(ex["image"] == by_key[ex["key"].decode()] for ex in parquet)


def test_webdataset_round_trip_sharding_and_shuffle(tmp_path):
  expected, jpeg = caption_shards(tmp_path)
  source = sources.webdataset_source(str(tmp_path / "*.tar"), num_epochs=1)
  records = delivered(source)
  assert sorted(ex["key"].decode() for ex in records) == sorted(expected)
  assert all(ex["text"].decode() == expected[ex["key"].decode()] and ex["image"] == jpeg
             for ex in records)
  # File-level (3 files, 3 hosts) and record-level (3 files, 5 hosts) sharding: disjoint, complete.
  for hosts in (3, 5):
    shards = [[ex["key"] for ex in delivered(source, shuffle=True, seed=7,
                                             shard_info=_shard(i, hosts))] for i in range(hosts)]
    flat = [k for shard in shards for k in shard]
    assert len(flat) == len(set(flat)) == len(expected), hosts
  first = [ex["key"] for ex in delivered(source, shuffle=True, seed=1)]
  assert first == [ex["key"] for ex in delivered(source, shuffle=True, seed=1)]
  assert first != [ex["key"] for ex in records] and sorted(first) == sorted(
      ex["key"] for ex in records)


def _shard(index, num):
  import seqio
  return seqio.ShardInfo(index, num)


def test_img2dataset_parquet_rows_across_row_groups(tmp_path):
  png = layouts.encode(layouts.photo("camera.png"), "PNG")
  rows = [{"key": f"{i:09d}", "caption": f"photo {i}", "image": png} for i in range(7)]
  rows[2] = {"key": "000000002", "caption": "gone", "image": None,
             "status": "failed_to_download"}
  rows[5] = {"key": "000000005", "caption": "", "image": png}
  layouts.write_img2dataset_parquet(str(tmp_path / "00000.parquet"), rows, "png")
  before = pp.record_counts()
  out = delivered(sources.img2dataset_parquet_source(str(tmp_path / "*.parquet")))
  assert [ex["key"].decode() for ex in out] == [f"{i:09d}" for i in (0, 1, 3, 4, 6)]
  assert counts_delta(before, "status_not_success") == 1
  assert counts_delta(before, "text_empty") == 1


def test_mmc4_jsonl_zip_and_images_from_a_folder(tmp_path):
  images = tmp_path / "images"
  images.mkdir()
  cat = layouts.encode(layouts.photo("chelsea.png").convert("RGB"), "JPEG")
  for name in ("a.jpg", "b.jpg"):
    (images / name).write_bytes(cat)
  docs = [layouts.mmc4_document("http://x/1", ["first.", "second.", "third."],
                                [("b.jpg", 2, 0.3), ("a.jpg", 0, 0.3)]),
          layouts.mmc4_document("http://x/2", ["alone."], [("missing.jpg", 0, 0.3)]),
          layouts.mmc4_document("http://x/3", ["x."], [("a.jpg", 4, 0.3)])]
  for compression, name in ((None, "d.jsonl"), ("zip", "d.jsonl.zip"), ("gz", "d.jsonl.gz")):
    folder = tmp_path / (compression or "plain")
    folder.mkdir()
    layouts.write_jsonl(str(folder / name), docs, compression)
    before = pp.record_counts()
    out = delivered(sources.mmc4_source(str(folder / "*"), image_dir=str(images)))
    assert [ex["key"] for ex in out] == [b"http://x/1", b"http://x/2"], compression
    assert list(out[0]["texts"]) == [b"first.", b"second.", b"third."]
    assert list(out[0]["image_text_index"]) == [0, 2]          # sorted by place
    assert list(out[0]["images"]) == [cat, cat] and len(out[1]["images"]) == 0
    assert counts_delta(before, "image_missing") == 1
    assert counts_delta(before, "matched_index_out_of_range") == 1


def test_openflamingo_tar_hungarian_threshold_and_small_images(tmp_path):
  big = layouts.encode(layouts.photo("astronaut.png").convert("RGB"), "JPEG", quality=95)
  small = layouts.encode(layouts.photo("coins.png").resize((16, 16)), "PNG")
  assert len(big) > 10 * 1024 > len(small)
  # Both images prefer sentence 0; one-to-one assignment gives image 1 sentence 2.
  similarity = np.array([[0.9, 0.1, 0.0], [0.8, 0.1, 0.5]])
  doc = layouts.mmc4_document("http://x/doc", ["s0", "s1", "s2"],
                              [("i0", 0, 0.9), ("i1", 0, 0.8)], similarity)
  low = layouts.mmc4_document("http://x/low", ["s0", "s1"], [("i0", 0, 0.1), ("i2", 1, 0.6)],
                              np.array([[0.1, 0.0], [0.0, 0.6]]))
  samples = [layouts.openflamingo_sample(doc, {"i0": big, "i1": big}),
             layouts.openflamingo_sample(low, {"i0": big, "i2": small})]
  layouts.write_webdataset(str(tmp_path / "00000.tar"), samples)
  before = pp.record_counts()
  out = delivered(sources.mmc4_tar_source(str(tmp_path / "*.tar")))
  assert [ex["key"] for ex in out] == [b"http://x/doc", b"http://x/low"]
  assert list(out[0]["image_text_index"]) == [0, 2] and list(out[0]["images"]) == [big, big]
  assert len(out[1]["images"]) == 0
  assert counts_delta(before, "image_below_similarity") == 1
  assert counts_delta(before, "image_too_small") == 1


def test_text_corpora_blocks_lines_gzip_and_jsonl(tmp_path):
  import gzip
  (tmp_path / "a.txt").write_text("one\nstill one\n\n\ntwo\n")
  (tmp_path / "b.txt.gz").write_bytes(gzip.compress(b"three\n\nfour\n"))
  out = delivered(sources.text_source(str(tmp_path / "*.txt*")))
  assert sorted(ex["text"] for ex in out) == [b"four", b"one\nstill one", b"three", b"two"]
  lines = delivered(sources.text_source(str(tmp_path / "a.txt"), mode="line"))
  assert [ex["text"] for ex in lines] == [b"one", b"still one", b"two"]
  (tmp_path / "c.jsonl").write_bytes(b'{"body": "five"}\n{oops\n{"other": 1}\n{"body": " "}\n'
                                     b'{"body": "six"}\n')
  before = pp.record_counts()
  out = delivered(sources.jsonl_text_source(str(tmp_path / "c.jsonl"), field="body"))
  assert [ex["text"] for ex in out] == [b"five", b"six"]
  for reason in ("json_malformed", "json_missing_field", "text_empty"):
    assert counts_delta(before, reason) == 1, reason
  (tmp_path / "d.txt").write_bytes(b"fine\n\n\xff\xfe bad\n")
  before = pp.record_counts()
  assert [ex["text"] for ex in delivered(sources.text_source(str(tmp_path / "d.txt")))] == [b"fine"]
  assert counts_delta(before, "text_not_utf8") == 1


def test_tfds_builder_with_image_and_caption_features(tmp_path):
  import tensorflow_datasets as tfds

  photos = [np.asarray(layouts.photo(n).convert("RGB").resize((40, 30)))
            for n in ("chelsea.png", "coffee.png", "astronaut.png")]

  class TinyCaptions(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(30, 40, 3)),
          "captions": tfds.features.Sequence({"text": tfds.features.Text()})}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i, image in enumerate(photos):
        yield i, {"image": image, "captions": {"text": [f"photo {i}", "other"]}}

  TinyCaptions(data_dir=str(tmp_path)).download_and_prepare()
  source = sources.tfds_source("tiny_captions", data_dir=str(tmp_path),
                               caption_key="captions/text", splits={"train": "train"})
  out = delivered(source)
  assert sorted(ex["text"] for ex in out) == [b"photo 0", b"photo 1", b"photo 2"]
  decoded = list(pp.decode_images(source.get_dataset("train", shuffle=False),
                                  image_size=30).as_numpy_iterator())
  assert all(ex["image"].shape == (30, 30, 3) for ex in decoded)
  with pytest.raises(ValueError, match="prepare it first"):
    sources.tfds_source("no_such_builder_xyz", data_dir=str(tmp_path)).get_dataset("train")


def test_every_source_resumes_mid_epoch_from_a_checkpoint(tmp_path):
  caption_shards(tmp_path / "wds", num_shards=3, per_shard=5)
  (tmp_path / "txt").mkdir()
  for i in range(3):
    (tmp_path / "txt" / f"{i}.txt").write_text("".join(f"doc {i} {j}\n\n" for j in range(6)))
  built = {"webdataset": lambda: sources.webdataset_source(str(tmp_path / "wds" / "*.tar"),
                                                             shuffle_buffer_size=4),
           "text": lambda: sources.text_source(str(tmp_path / "txt" / "*.txt"),
                                               shuffle_buffer_size=4)}
  for name, make in built.items():
    def stream():
      return make().get_dataset("train", shuffle=True, seed=5).repeat().with_options(
          pp.stateful_pipeline_options())
    reference = [ex["key"] for ex, _ in zip(stream().as_numpy_iterator(), range(40))]
    iterator = iter(stream())
    head = [next(iterator)["key"].numpy() for _ in range(11)]
    path = tf.train.Checkpoint(it=iterator).write(str(tmp_path / name / "ckpt"))
    resumed = iter(stream())
    tf.train.Checkpoint(it=resumed).read(path).expect_partial()
    tail = [next(resumed)["key"].numpy() for _ in range(29)]
    assert head + tail == reference, name


def test_missing_files_and_splits_are_one_clear_error(tmp_path):
  with pytest.raises(ValueError, match="no files match"):
    sources.webdataset_source(str(tmp_path / "nothing-*.tar")).get_dataset("train")
  with pytest.raises(ValueError, match="no split 'validation'"):
    sources.text_source(str(tmp_path / "*.txt")).get_dataset("validation")
