"""The shapes world: determinism, held-out combinations, correct captions/answers and pixels,
and its word-level vocabulary."""
import re

import numpy as np
import pytest

from kosmos_jax.data import synthetic as syn
from kosmos_jax.data import vocab as vocab_lib

SMALL = syn.WorldConfig(seed=5, train_images=400, eval_images=120, train_documents=60,
                        eval_documents=30, train_text_documents=60, eval_text_documents=30)
HELD_OUT_PHRASES = [f"{c} {s}" for c, s in syn.HELD_OUT_COMBOS]


def fresh(config, split):
  return syn.split_data.__wrapped__(config, split)   # bypasses the per-process cache


def all_strings(data):
  yield from data.captions["answer"]
  yield from (p + " " + a for p, a in zip(data.vqa["prompt"], data.vqa["answer"]))
  for texts in data.interleaved["texts"]:
    yield from texts
  yield from data.text["text"]


def test_same_seed_same_world_other_seed_differs():
  a, b = fresh(SMALL, "train"), fresh(SMALL, "train")
  _ = b.vqa, b.text             # parts are lazy; the order they are built in must not matter
  np.testing.assert_array_equal(a.images, b.images)
  assert list(all_strings(a)) == list(all_strings(b))
  other = fresh(syn.WorldConfig(seed=6, train_images=400), "train")
  assert not np.array_equal(a.images, other.images[:400])
  assert a.captions["answer"] != other.captions["answer"][:400]
  assert a.images.shape == (400, 32, 32, 3) and a.images.dtype == np.uint8


@pytest.mark.parametrize("split", syn.SPLITS)
def test_held_out_combinations_only_in_heldout_split(split):
  data = fresh(SMALL, split)
  scenes = data.scenes
  held = [[(syn.COLOURS[k], syn.SHAPES[s]) in syn.HELD_OUT_COMBOS for _, k, s in
           scenes.objects(i)] for i in range(len(scenes))]
  if split == "heldout":
    assert all(any(h) for h in held)
    focus = [syn.COLOURS[scenes.colours[i, f]] + " " + syn.SHAPES[scenes.shapes[i, f]]
             for i, f in enumerate(scenes.focus)]
    assert all(f in HELD_OUT_PHRASES for f in focus)     # questions are about the new combo
  else:
    assert not any(any(h) for h in held)
    for text in all_strings(data):
      assert not any(p in text for p in HELD_OUT_PHRASES), text


def test_scenes_are_valid_and_captions_canonical():
  data = fresh(SMALL, "validation")
  for i in range(len(data.scenes)):
    objects = data.scenes.objects(i)
    cells = [c for c, _, _ in objects]
    assert 1 <= len(objects) <= 3 and cells == sorted(set(cells))     # distinct, row-major
    assert data.captions["answer"][i] == " and ".join(
        f"a {syn.COLOURS[k]} {syn.SHAPES[s]} at the {syn.POSITIONS[c]}" for c, k, s in objects)
  assert data.captions["prompt"][0] == "an image of"


def check_answer(objects, question, answer):
  """Independent re-derivation of each question type's answer from the scene."""
  numbers = list(syn.NUMBERS)
  if question == "how many objects are there?":
    return answer == numbers[len(objects)]
  if m := re.fullmatch(r"how many (\w+) are there\?", question):
    shape = syn.SHAPES[syn.SHAPE_PLURALS.index(m[1])]
    return answer == numbers[sum(syn.SHAPES[s] == shape for _, _, s in objects)]
  if m := re.fullmatch(r"what colour is the (\w+)\?", question):
    matches = [syn.COLOURS[k] for _, k, s in objects if syn.SHAPES[s] == m[1]]
    return matches == [answer]
  if m := re.fullmatch(r"what shape is at the ([\w ]+)\?", question):
    return [syn.SHAPES[s] for c, _, s in objects if syn.POSITIONS[c] == m[1]] == [answer]
  if m := re.fullmatch(r"what colour is the object at the ([\w ]+)\?", question):
    return [syn.COLOURS[k] for c, k, _ in objects if syn.POSITIONS[c] == m[1]] == [answer]
  if m := re.fullmatch(r"is there a (\w+) (\w+)\?", question):
    present = any((syn.COLOURS[k], syn.SHAPES[s]) == (m[1], m[2]) for _, k, s in objects)
    return answer == ("yes" if present else "no")
  if m := re.fullmatch(r"where is the (\w+) (\w+)\?", question):
    return [syn.POSITIONS[c] for c, k, s in objects
            if (syn.COLOURS[k], syn.SHAPES[s]) == (m[1], m[2])] == [answer]
  raise AssertionError(f"unexpected question {question!r}")


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_vqa_answers_are_right(split):
  data = fresh(SMALL, split)
  vqa = data.vqa
  assert set(vqa["question_type"]) == set(syn.QUESTION_TYPES)
  yes = sum(a == "yes" for a in vqa["answer"])
  no = sum(a == "no" for a in vqa["answer"])
  assert 0.3 < yes / (yes + no) < 0.7
  for image_id, prompt, answer in zip(vqa["image_id"], vqa["prompt"], vqa["answer"]):
    question = re.fullmatch(r"Question: (.*) Answer:", prompt)[1]
    assert check_answer(data.scenes.objects(int(image_id)), question, answer), (prompt, answer)


def test_pixels_show_the_objects():
  rng = np.random.default_rng(0)
  scenes = syn.sample_scenes(rng, 200, held_out=False)
  images = syn.render(scenes, rng)
  for i in range(len(scenes)):
    for cell, colour, _ in scenes.objects(i):
      y, x = (cell // 3) * 32 / 3 + 16 / 3, (cell % 3) * 32 / 3 + 16 / 3
      patch = images[i, int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2].reshape(-1, 3)
      distance = np.abs(patch.astype(int) - syn.RGB[colour]).sum(axis=1).min()
      assert distance < 60, (i, cell, syn.COLOURS[colour])
    empty = [c for c in range(9) if c not in [o[0] for o in scenes.objects(i)]]
    for cell in empty:   # an empty cell's centre is dark background
      y, x = int((cell // 3) * 32 / 3 + 16 / 3), int((cell % 3) * 32 / 3 + 16 / 3)
      assert images[i, y, x].max() < 60


def test_interleaved_documents_and_eval_api():
  data = fresh(SMALL, "test")
  counts = [len(ids) for ids in data.interleaved["image_ids"]]
  assert min(counts) >= 1 and max(counts) <= 5 and 1 in counts and 5 in counts
  for texts, index in zip(data.interleaved["texts"], data.interleaved["image_text_index"]):
    assert list(index) == sorted(index) and 0 < index[0] and index[-1] < len(texts)
  examples = syn.eval_examples("vqa", "test", SMALL, limit=10)
  assert len(examples) == 10
  assert examples[0]["images"].shape == (1, 32, 32, 3)
  assert examples[0]["prompt"].startswith("Question: ") and examples[0]["prompt"].endswith(
      "Answer:")
  captions = syn.eval_examples("captions", "test", SMALL)
  assert len(captions) == SMALL.eval_images and captions[3]["prompt"] == "an image of"
  np.testing.assert_array_equal(captions[3]["images"][0], data.images[3])
  with pytest.raises(ValueError, match="kind"):
    syn.eval_examples("text", "test", SMALL)


def test_vocabulary_is_small_word_level_and_reproducible(tmp_path, monkeypatch):
  vocab = syn.ShapesVocabulary()
  assert vocab.vocab_size <= 256
  for split in ("train", "heldout"):
    for text in list(all_strings(fresh(SMALL, split)))[:2000]:
      ids = vocab.encode(text)
      assert vocab.unk_id not in ids, text
      words = re.findall(r"[A-Za-z]+|[.?:]", text)
      assert len(ids) == len(words), text                  # one piece per word or mark
  # Training again elsewhere gives the same model bytes.
  monkeypatch.setenv("KOSMOS_JAX_CACHE", str(tmp_path))
  again = syn.shapes_vocabulary_file()
  assert again.startswith(str(tmp_path))
  assert open(again, "rb").read() == vocab.sp_model
  assert isinstance(vocab, vocab_lib.KosmosVocabulary)
