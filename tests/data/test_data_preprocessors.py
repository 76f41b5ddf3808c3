"""Sequence formats, image decoding and the counted filters of kosmos_jax.data.preprocessors."""
import numpy as np
import pytest
import tensorflow as tf

from kosmos_jax.data import images as images_lib
from kosmos_jax.data import preprocessors as pp
from kosmos_jax.data.tasks import output_features


def run(ds):
  return list(ds.as_numpy_iterator())


def counts_delta(before, reason):
  return pp.record_counts().get(reason, 0) - before.get(reason, 0)


def test_text_sequence(small_vocab):
  ds = tf.data.Dataset.from_tensors({"text": "the red circle", "id": 7})
  (ex,) = run(pp.text_to_sequence(ds, output_features(small_vocab)))
  assert ex["targets"].tolist() == small_vocab.encode("the red circle") + [small_vocab.eos_id]
  assert ex["loss_weights"].tolist() == [1] * len(ex["targets"])
  assert ex["images"].shape == (0, 1, 1, 3) and ex["id"] == 7     # other features pass through


def test_image_text_sequence_with_prompt(small_vocab):
  v = small_vocab
  image = np.full((4, 4, 3), 9, np.uint8)
  ds = tf.data.Dataset.from_tensors({"image": image, "q": "what colour?", "a": "red"})
  (ex,) = run(pp.image_text_to_sequence(ds, output_features(v), text_key="a", prompt_key="q",
                                        prompt_loss=False))
  prompt, answer = v.encode("what colour?"), v.encode("red")
  assert ex["targets"].tolist() == [v.image_id, v.end_image_id, *prompt, *answer, v.eos_id]
  assert ex["loss_weights"].tolist() == [0, 0] + [0] * len(prompt) + [1] * len(answer) + [1]
  np.testing.assert_array_equal(ex["images"], image[None])
  assert ex["a"] == b"red"                                     # strings stay for evaluation


def test_image_text_sequence_needs_decoded_images(small_vocab):
  ds = tf.data.Dataset.from_tensors({"image": b"\x89PNG", "text": "red"})
  with pytest.raises(ValueError, match="decode_images"):
    pp.image_text_to_sequence(ds, output_features(small_vocab))


def test_instruction_sequence_trains_on_output_only(small_vocab):
  v = small_vocab
  ds = tf.data.Dataset.from_tensors({"instruction": "answer the question", "input": "one two",
                                     "output": "three"})
  (ex,) = run(pp.instruction_to_sequence(ds, output_features(v)))
  instruction, inp, out = (v.encode(t) for t in ("answer the question", "one two", "three"))
  assert ex["targets"].tolist() == instruction + inp + out + [v.eos_id]
  assert ex["loss_weights"].tolist() == [0] * (len(instruction) + len(inp)) + [1] * (len(out) + 1)
  assert ex["images"].shape[0] == 0


def interleaved_doc(texts, num_images, index):
  images = np.stack([np.full((4, 4, 3), 10 * (i + 1), np.uint8) for i in range(num_images)])
  return {"texts": texts, "images": images.reshape(num_images, 4, 4, 3),
          "image_text_index": np.asarray(index, np.int32)}


def test_interleaved_sequence_places_image_slots(small_vocab):
  v = small_vocab
  doc = interleaved_doc(["a red circle.", "the photo.", "blue"], 3, [0, 2, 3])
  ds = tf.data.Dataset.from_tensors(doc)
  (ex,) = run(pp.interleaved_to_sequence(ds, output_features(v)))
  slot = [v.image_id, v.end_image_id]
  t0, t1, t2 = (v.encode(t) for t in doc["texts"])
  expected = slot + t0 + t1 + slot + t2 + slot + [v.eos_id]
  assert ex["targets"].tolist() == expected
  assert ex["loss_weights"].tolist() == [0 if t in slot else 1 for t in expected]
  np.testing.assert_array_equal(ex["images"], doc["images"])

  (capped,) = run(pp.interleaved_to_sequence(ds, output_features(v), max_images=2))
  assert capped["targets"].tolist() == slot + t0 + t1 + slot + t2 + [v.eos_id]
  np.testing.assert_array_equal(capped["images"], doc["images"][:2])


def test_interleaved_bad_documents_are_counted(small_vocab):
  good = interleaved_doc(["a", "b"], 2, [0, 1])
  unsorted = interleaved_doc(["a", "b"], 2, [1, 0])
  out_of_range = interleaved_doc(["a", "b"], 1, [5])
  no_images = {"texts": np.array(["a", "b"]), "images": np.zeros((0, 4, 4, 3), np.uint8),
               "image_text_index": np.zeros((0,), np.int32)}
  docs = [good, unsorted, out_of_range, no_images, good]

  def gen():
    yield from docs
  spec = {"texts": tf.TensorSpec([None], tf.string),
          "images": tf.TensorSpec([None, 4, 4, 3], tf.uint8),
          "image_text_index": tf.TensorSpec([None], tf.int32)}
  ds = tf.data.Dataset.from_generator(gen, output_signature=spec)
  before = pp.record_counts()
  out = run(pp.interleaved_to_sequence(ds, output_features(small_vocab)))
  assert len(out) == 2
  assert counts_delta(before, "interleaved_bad_image_index") == 2
  assert counts_delta(before, "interleaved_no_images") == 1


def test_drop_single_image_documents_is_deterministic_and_counted():
  num_single, num_multi = 300, 60
  texts = [f"document number {i}" for i in range(num_single + num_multi)]
  counts = [1] * num_single + [3] * num_multi
  ds = tf.data.Dataset.from_tensor_slices({
      "texts": tf.constant([[t] for t in texts]),
      "images": tf.RaggedTensor.from_row_lengths(tf.zeros([sum(counts), 2, 2, 3], tf.uint8),
                                                 counts)})

  def kept(seed, data=ds):
    before = pp.record_counts()
    names = [ex["texts"][0].decode() for ex in run(pp.drop_single_image_documents(data,
                                                                                  seed=seed))]
    dropped = counts_delta(before, "interleaved_single_image_dropped")
    assert dropped == num_single + num_multi - len(names)
    return names
  first, again, other = kept(0), kept(0), kept(1)
  assert first == again and first != other
  assert all(t in first for t in texts[num_single:])               # multi-image docs stay
  singles = sum(t in first for t in texts[:num_single])
  assert 0.4 * num_single < singles < 0.6 * num_single
  # The choice is per document, so it survives reordering (and therefore sharding).
  assert sorted(kept(0, ds.shuffle(400, seed=3))) == sorted(first)
  with pytest.raises(ValueError, match="rate"):
    pp.drop_single_image_documents(ds, rate=1.5)


def test_decode_images_resizes_and_skips_corrupt_records():
  rng = np.random.RandomState(0)
  wide = rng.randint(0, 255, (40, 80, 3)).astype(np.uint8)
  square = rng.randint(0, 255, (32, 32, 3)).astype(np.uint8)
  png_wide = tf.io.encode_png(wide).numpy()
  png_square = tf.io.encode_png(square).numpy()
  jpeg = tf.io.encode_jpeg(wide).numpy()
  ds = tf.data.Dataset.from_tensor_slices(
      {"image": [png_wide, b"not an image", png_square, jpeg[:100], jpeg], "id": [0, 1, 2, 3, 4]})
  before = pp.record_counts()
  out = run(pp.decode_images(ds, image_size=32))
  assert [ex["id"] for ex in out] == [0, 2, 4]
  assert counts_delta(before, "image_corrupt") == 2      # not an image; truncated JPEG
  assert all(ex["image"].shape == (32, 32, 3) and ex["image"].dtype == np.uint8 for ex in out)
  np.testing.assert_array_equal(out[1]["image"], square)       # already the size: untouched
  # 40x80 -> 32x64 with Pillow's bicubic (as CLIP's processor) -> the centre 32 columns.
  from PIL import Image
  reference = np.asarray(Image.fromarray(wide).resize((64, 32), Image.BICUBIC))[:, 16:48]
  np.testing.assert_array_equal(out[0]["image"], reference)

  # In a document a bad image goes (with its matched text index); the document stays.
  vectors = tf.data.Dataset.from_tensors({"images": [png_wide, b"", png_square],
                                          "index": [0, 1, 2]})
  before = pp.record_counts()
  (doc,) = run(pp.decode_images(vectors, image_key="images", image_size=16, index_key="index"))
  assert doc["images"].shape == (2, 16, 16, 3)
  assert list(doc["index"]) == [0, 2]
  assert counts_delta(before, "image_empty") == 1


def test_resize_images_is_identity_at_model_size():
  images = np.random.RandomState(1).randint(0, 255, (3, 8, 8, 3)).astype(np.uint8)
  np.testing.assert_array_equal(images_lib.resize_images(tf.constant(images), 8).numpy(), images)
  assert images_lib.resize_images(tf.constant(images), 4).shape == (3, 4, 4, 3)
  assert images_lib.resize_images(tf.zeros([0, 1, 1, 3], tf.uint8), 4).shape == (0, 4, 4, 3)
