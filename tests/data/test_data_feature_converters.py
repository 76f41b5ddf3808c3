"""KosmosFeatureConverter: hand-checked packed rows, image mapping, capacity, truncation,
dropped records, unpacked rows and checkpointing of the packed pipeline."""
import numpy as np
import pytest
import tensorflow as tf

from kosmos_jax.data import feature_converters as fc
from kosmos_jax.data import preprocessors as pp
from kosmos_jax.data.tasks import output_features

K = 3          # placeholders per image in these tests
SIZE = 4       # image side


def image(value):
  return np.full((SIZE, SIZE, 3), value, np.uint8)


def task_features(ds):
  """Only the task features (what a seqio Mixture keeps), so different kinds concatenate."""
  return ds.map(lambda ex: {k: ex[k] for k in pp.TASK_FEATURE_KEYS})


def caption_ds(vocab, captions, values):
  ds = tf.data.Dataset.from_tensor_slices(
      {"image": np.stack([image(v) for v in values]), "text": captions})
  return task_features(pp.image_text_to_sequence(ds, output_features(vocab)))


def convert(vocab, ds, length, max_images, pack=True, num_image_tokens=K, length_check=False):
  """Rows as numpy. Like the training pipeline, skip seqio's run-time length asserts (the
  converter sets static shapes) unless `length_check`."""
  converter = fc.KosmosFeatureConverter(vocab, num_image_tokens, SIZE, pack=pack,
                                        apply_length_check=length_check)
  return list(converter(ds, fc.task_feature_lengths(length, max_images)).as_numpy_iterator())


def runs(mask):
  """(start, length) of each run of ones."""
  padded = np.concatenate([[0], mask, [0]])
  edges = np.flatnonzero(np.diff(padded))
  return list(zip(edges[::2], edges[1::2] - edges[::2]))


def test_hand_checked_row_with_two_captions(small_vocab):
  v = small_vocab
  a, b = v.encode("red")[0], v.encode("blue")[0]
  c = v.encode("circle")[0]
  ds = caption_ds(v, ["red blue", "circle"], [11, 22])
  (row,) = convert(v, ds, length=20, max_images=3, length_check=True)
  img, end, ph, eos = v.image_id, v.end_image_id, v.image_placeholder_id, v.eos_id
  pad5 = [0] * 5
  # segment 1: <image> P P P </image> red blue </s>   segment 2: <image> P P P </image> circle </s>
  assert row["decoder_target_tokens"].tolist() == (
      [img, ph, ph, ph, end, a, b, eos] + [img, ph, ph, ph, end, c, eos] + pad5)
  assert row["decoder_input_tokens"].tolist() == (
      [0, img, ph, ph, ph, end, a, b] + [0, img, ph, ph, ph, end, c] + pad5)
  assert row["decoder_loss_weights"].tolist() == (
      [0, 0, 0, 0, 0, 1, 1, 1] + [0, 0, 0, 0, 0, 1, 1] + pad5)
  assert row["decoder_segment_ids"].tolist() == [1] * 8 + [2] * 7 + pad5
  assert row["decoder_positions"].tolist() == list(range(8)) + list(range(7)) + pad5
  assert row["decoder_image_token_mask"].tolist() == (
      [0, 0, 1, 1, 1, 0, 0, 0] + [0, 0, 1, 1, 1, 0, 0] + pad5)
  assert row["image_mask"].tolist() == [1, 1, 0]
  assert row["images"][:, 0, 0, 0].tolist() == [11, 22, 0]
  assert row["images"].shape == (3, SIZE, SIZE, 3) and row["images"].dtype == np.uint8


def test_interleaved_runs_map_to_their_images(small_vocab):
  """Through the model's own splice: run k of a row receives images[row, k]."""
  from kosmos_jax.models.decoder import splice_image_embeddings
  v = small_vocab
  doc = {"texts": ["here is a photo.", "red circle.", "blue square.", "the end."],
         "images": np.stack([image(101), image(102), image(103)]),
         "image_text_index": np.array([1, 2, 3], np.int32)}
  docs = task_features(pp.interleaved_to_sequence(tf.data.Dataset.from_tensors(doc),
                                                  output_features(v)))
  caption = caption_ds(v, ["green"], [100])
  rows = convert(v, caption.concatenate(docs), length=64, max_images=4)
  assert len(rows) == 1
  row = rows[0]
  assert row["decoder_segment_ids"].max() == 2
  assert row["image_mask"].tolist() == [1, 1, 1, 1]
  assert row["images"][:, 0, 0, 0].tolist() == [100, 101, 102, 103]
  mask = row["decoder_image_token_mask"]
  assert [n for _, n in runs(mask)] == [K] * 4
  # Each run sits right after an <image> input and before </image>.
  for start, n in runs(mask):
    assert row["decoder_input_tokens"][start - 1] == v.image_id
    assert row["decoder_input_tokens"][start + n] == v.end_image_id
  # Image embeddings = the image's pixel value, so a spliced position shows which image it got.
  values = row["images"][:, 0, 0, 0].astype(np.float32)                # [4]
  embeds = np.broadcast_to(values[None, :, None, None], (1, 4, K, 1))    # [1, 4, K, 1]
  tokens = np.full((1, 64, 1), -1.0, np.float32)
  spliced = np.asarray(splice_image_embeddings(tokens, embeds, mask[None]))[0, :, 0]
  for k, (start, n) in enumerate(runs(mask)):
    assert (spliced[start:start + n] == 100 + k).all()
  assert (spliced[mask == 0] == -1).all()


def test_rows_respect_image_capacity_and_keep_every_image(small_vocab):
  v = small_vocab
  docs = []
  for i in range(5):      # five docs with two images each; rows hold at most three images
    docs.append({"texts": [f"doc {i}", "red"], "images": np.stack([image(10 * i + 1),
                                                                   image(10 * i + 2)]),
                 "image_text_index": np.array([0, 1], np.int32)})
  ds = tf.data.Dataset.from_tensor_slices({k: np.stack([d[k] for d in docs]) for k in docs[0]})
  ds = pp.interleaved_to_sequence(ds, output_features(v))
  rows = convert(v, ds, length=128, max_images=3)
  assert len(rows) == 5                              # 2 + 2 > 3, so one document per row
  seen = []
  for row in rows:
    count = int(row["image_mask"].sum())
    assert count <= 3 and len(runs(row["decoder_image_token_mask"])) == count
    seen += row["images"][:count, 0, 0, 0].tolist()
  assert seen == [10 * i + j for i in range(5) for j in (1, 2)]


def test_truncation_never_cuts_an_image_block(small_vocab):
  v = small_vocab
  assert len(v.encode("red")) == 1
  four = np.stack([image(1), image(2), image(3), image(4)])
  docs = [  # block = <image> P P P </image> (5 tokens); expanded layouts in the comments
      # B0 red B1 red B2 red B3 red </s>: blocks at 0, 6, 12, 18
      {"texts": ["red"] * 4, "images": four, "image_text_index": [0, 1, 2, 3]},
      # red B0 red B1 red B2 red B3 </s>: blocks at 1, 7, 13, 19
      {"texts": ["red"] * 4, "images": four, "image_text_index": [1, 2, 3, 4]},
      # 12 text tokens, then B0 ... : the cut falls in the text before any block
      {"texts": [" ".join(["red"] * 12), "red", "red", "red"], "images": four,
       "image_text_index": [1, 2, 3, 4]},
  ]
  spec = {"texts": tf.TensorSpec([None], tf.string),
          "images": tf.TensorSpec([None, SIZE, SIZE, 3], tf.uint8),
          "image_text_index": tf.TensorSpec([None], tf.int32)}
  ds = pp.interleaved_to_sequence(
      tf.data.Dataset.from_generator(lambda: iter(docs), output_signature=spec),
      output_features(v))
  ds = task_features(ds)
  # length 11: doc 0 keeps B0 red B1 (block 1 ends at 10); doc 1 is cut inside B1 (7..11);
  # doc 2 keeps 11 text tokens and no image.
  before = pp.record_counts().get("truncated_to_row_length", 0)
  rows = convert(v, ds, length=11, max_images=4, pack=False)
  assert pp.record_counts()["truncated_to_row_length"] - before == 3
  assert [int((r["decoder_segment_ids"] > 0).sum()) for r in rows] == [11, 7, 11]
  assert [int(r["image_mask"].sum()) for r in rows] == [2, 1, 0]
  for row in rows:
    kept = int(row["image_mask"].sum())
    assert [n for _, n in runs(row["decoder_image_token_mask"])] == [K] * kept
  # At most two images per row: doc 0 is cut before its third block (at 12).
  rows = convert(v, ds.take(1), length=200, max_images=2)
  assert rows[0]["image_mask"].tolist() == [1, 1]
  assert int((rows[0]["decoder_segment_ids"] > 0).sum()) == 12


def test_text_rows_have_no_images_and_mix_with_captions(small_vocab):
  v = small_vocab
  long_text = " ".join(["hello world"] * 6)
  texts = task_features(pp.text_to_sequence(
      tf.data.Dataset.from_tensor_slices({"text": [long_text, "red"]}), output_features(v)))
  length = len(v.encode(long_text)) + 1          # the long text fills row 1 exactly
  assert len(v.encode("red")) + 1 + (K + 2 + 2) <= length
  rows = convert(v, texts.concatenate(caption_ds(v, ["red"], [5])), length=length,
                 max_images=2)
  only_text, mixed = rows
  assert only_text["image_mask"].tolist() == [0, 0] and not only_text["images"].any()
  assert not only_text["decoder_image_token_mask"].any()
  assert only_text["decoder_segment_ids"].tolist() == [1] * length
  assert mixed["decoder_segment_ids"].max() == 2 and mixed["image_mask"].tolist() == [1, 0]
  assert mixed["images"][0, 0, 0, 0] == 5 and mixed["decoder_image_token_mask"].sum() == K


def test_unpacked_rows(small_vocab):
  v = small_vocab
  rows = convert(v, caption_ds(v, ["red blue", "circle"], [1, 2]), length=12, max_images=2,
                 pack=False)
  assert len(rows) == 2
  assert rows[0]["decoder_segment_ids"].tolist() == [1] * 8 + [0] * 4
  assert rows[1]["decoder_positions"].tolist() == list(range(7)) + [0] * 5
  assert [r["image_mask"].tolist() for r in rows] == [[1, 0], [1, 0]]


def test_bad_records_are_dropped_and_counted(small_vocab):
  v = small_vocab
  good = {"targets": [v.image_id, v.end_image_id, 50, v.eos_id], "loss_weights": [0, 0, 1, 1],
          "images": np.stack([image(1)])}
  two_slots_one_image = {"targets": [v.image_id, v.end_image_id, v.image_id, v.end_image_id, 50,
                                     v.eos_id], "loss_weights": [0, 0, 0, 0, 1, 1],
                         "images": np.stack([image(2)])}
  no_loss = {"targets": [50, v.eos_id], "loss_weights": [0, 0],
             "images": np.zeros((0, SIZE, SIZE, 3), np.uint8)}
  short_weights = {"targets": [50, 51, v.eos_id], "loss_weights": [1],
                   "images": np.zeros((0, SIZE, SIZE, 3), np.uint8)}
  examples = [good, two_slots_one_image, no_loss, short_weights, good]
  spec = {"targets": tf.TensorSpec([None], tf.int32),
          "loss_weights": tf.TensorSpec([None], tf.int32),
          "images": tf.TensorSpec([None, SIZE, SIZE, 3], tf.uint8)}
  ds = tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=spec)
  before = pp.record_counts()
  rows = convert(v, ds, length=32, max_images=4)
  after = pp.record_counts()
  assert sum(int(r["decoder_segment_ids"].max()) for r in rows) == 2
  assert after["image_slot_mismatch"] - before.get("image_slot_mismatch", 0) == 2
  assert after["no_loss_tokens"] - before.get("no_loss_tokens", 0) == 1


def test_invalid_settings_raise(small_vocab):
  with pytest.raises(ValueError, match="num_image_tokens"):
    fc.KosmosFeatureConverter(small_vocab, 0, SIZE)
  converter = fc.KosmosFeatureConverter(small_vocab, 8, SIZE)
  ds = caption_ds(small_vocab, ["red"], [1])
  with pytest.raises(ValueError, match="cannot hold an image block"):
    converter(ds, fc.task_feature_lengths(8, 2))
  with pytest.raises(ValueError, match="loss_weights"):
    converter(ds.map(lambda ex: {"targets": ex["targets"], "images": ex["images"]}),
              fc.task_feature_lengths(32, 2))


def test_packed_iterator_checkpoint_resumes_exactly(small_vocab, tmp_path):
  from kosmos_jax.data.pipeline import DataIterator
  v = small_vocab
  words = ["red", "blue circle", "the top left", "green", "a square at the center"]
  captions = [words[i % 5] for i in range(60)]
  ds = caption_ds(v, captions, list(range(60))).repeat().shuffle(16, seed=1)
  converter = fc.KosmosFeatureConverter(v, K, SIZE)
  batches = converter(ds, fc.task_feature_lengths(24, 3)).batch(2)
  first = DataIterator(batches)
  for _ in range(3):
    next(first)
  path = first.save(str(tmp_path))
  expected = [next(first) for _ in range(4)]
  resumed = DataIterator(batches)
  resumed.restore(path)
  for want in expected:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_packing_efficiency_helper():
  rows = [{"decoder_segment_ids": np.array([[1, 1, 2, 0], [1, 0, 0, 0]])}]
  assert fc.packing_efficiency(rows) == 4 / 8
  with pytest.raises(ValueError):
    fc.packing_efficiency([])
