"""Virtual data shards on real-format sources: the global batch does not depend on the host
count, and a data position saved by 2 hosts restores on 1 (and the reverse) with the same
following batches, packed rows with images included."""
import numpy as np
import pytest

from kosmos_jax.data import pipeline
from kosmos_jax.data import sharded_iterator
from kosmos_jax.data import sources
from kosmos_jax.data import synthetic
from kosmos_jax.data import tasks
from tests.data import layouts

SHAPE = dict(length=64, num_image_tokens=4, image_size=16, max_images=4, seed=3)
GLOBAL_BATCH, SHARDS = 8, 4


@pytest.fixture(scope="module")
def task_names(tmp_path_factory):
  root = tmp_path_factory.mktemp("sharded")
  layouts.shapes_caption_shards(str(root / "wds"), num_shards=3, count=120)
  captions = tasks.image_text_task(
      "sharded_wds_captions", sources.webdataset_source(str(root / "wds" / "*.tar"),
                                                        shuffle_buffer_size=16),
      synthetic.ShapesVocabulary(), image_size=16)
  cat = layouts.encode(layouts.photo("chelsea.png").convert("RGB").resize((48, 32)), "JPEG")
  (root / "images").mkdir()
  (root / "images" / "cat.jpg").write_bytes(cat)
  docs = [layouts.mmc4_document(f"http://x/{i}", ["a red circle", "a blue square", "a cat"],
                                [("cat.jpg", i % 3, 0.3), ("cat.jpg", 2, 0.3)])
          for i in range(40)]
  layouts.write_jsonl(str(root / "docs.jsonl.zip"), docs, "zip")
  interleaved = tasks.interleaved_task(
      "sharded_mmc4_docs", sources.mmc4_source(str(root / "docs.jsonl.zip"),
                                               image_dir=str(root / "images")),
      synthetic.ShapesVocabulary(), image_size=16, single_image_drop_rate=0.0)
  return [captions, interleaved]


def make(name, process_index, process_count):
  def shard(index, count):
    return pipeline.make_iterator(name, batch_size=GLOBAL_BATCH // count, shard_index=index,
                                  num_shards=count, **SHAPE)
  return sharded_iterator.ShardedDataIterator(shard, num_data_shards=SHARDS,
                                              process_index=process_index,
                                              process_count=process_count)


def global_batch(iterators):
  parts = [next(it) for it in iterators]
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def assert_same(a, b):
  assert sorted(a) == sorted(b)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# 1 host -> 2 hosts once, on the webdataset task: the sharded iterator's logic does not depend
# on the source, and each restore builds 4 more tf.data pipelines (~2 s each).
@pytest.mark.parametrize("which, back_to_two", [(0, True), (1, False)],
                         ids=["webdataset", "mmc4"])
def test_position_restores_on_another_host_count(task_names, tmp_path, which, back_to_two):
  name = task_names[which]
  one = [make(name, 0, 1)]
  two = [make(name, p, 2) for p in range(2)]
  for _ in range(3):                 # same global batches on 1 and on 2 hosts
    assert_same(global_batch(one), global_batch(two))
  assert global_batch(two)["images"].any()
  for it in two:                      # both hosts write into the one data directory
    it.save(str(tmp_path / "data"))
  expected = [global_batch(two) for _ in range(3)]
  resumed = [make(name, 0, 1)]
  resumed[0].restore(str(tmp_path / "data"))
  for batch in expected:
    assert_same(global_batch(resumed), batch)
  if not back_to_two:
    return
  resumed[0].save(str(tmp_path / "data_from_one"))   # and back: 1 host -> 2 hosts
  expected = [global_batch(resumed) for _ in range(2)]
  two_again = [make(name, p, 2) for p in range(2)]
  for it in two_again:
    it.restore(str(tmp_path / "data_from_one"))
  for batch in expected:
    assert_same(global_batch(two_again), batch)


def test_layout_errors_say_what_to_change():
  with pytest.raises(ValueError, match="must divide the global batch_size=8"):
    sharded_iterator.check_layout(8, 3, 1)
  with pytest.raises(ValueError, match="not a multiple of the 3 processes"):
    sharded_iterator.check_layout(8, 4, 3)
