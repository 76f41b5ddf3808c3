"""The shapes world: a built-in multimodal dataset generated from a seed, with no downloads.

Images are 32x32 (rendered at 64 and 2x2 mean-pooled) with 1-3 objects in distinct cells of a
3x3 grid, 4 shapes x 6 colours, jittered positions and sizes. Four colour-shape combinations
never appear in train/validation/test; the `heldout` split has at least one of them per image.
Text comes in four kinds, all about the same world:
  captions     `an image of a red circle at the top left and a blue square at the center`
  vqa          `Question: what colour is the circle? Answer: red` (7 question types)
  interleaved  several images with sentences about them (MMC4-style texts + image index)
  text         documents describing scenes in words only
Everything is deterministic in `WorldConfig.seed`. The vocabulary is a word-level SentencePiece
model trained on the world's sentences, cached under $KOSMOS_JAX_CACHE (default
~/.cache/kosmos_jax); its Kosmos vocab size is well under the `tiny` model's 256.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import os
import re
import tempfile
from typing import Optional

import numpy as np
import tensorflow as tf

from kosmos_jax.data import vocab as vocab_lib

SHAPES = ("circle", "square", "triangle", "cross")
SHAPE_PLURALS = ("circles", "squares", "triangles", "crosses")
COLOURS = ("red", "green", "blue", "yellow", "purple", "white")
RGB = np.array([[220, 40, 40], [40, 200, 60], [50, 90, 235], [235, 220, 40], [160, 60, 200],
                [235, 235, 235]], np.float32)
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom",
             "bottom right")
NUMBERS = ("zero", "one", "two", "three", "four", "five")
HELD_OUT_COMBOS = (("green", "triangle"), ("blue", "circle"), ("yellow", "square"),
                   ("purple", "cross"))
SPLITS = ("train", "validation", "test", "heldout")
QUESTION_TYPES = ("count", "count_shape", "colour_of", "shape_at", "colour_at", "exists", "where")
KINDS = ("captions", "vqa", "interleaved", "text")
CAPTION_PROMPT = "an image of"
MAX_OBJECTS = 3

_HELD_OUT = {(COLOURS.index(c), SHAPES.index(s)) for c, s in HELD_OUT_COMBOS}
_ALLOWED = np.array([(c, s) for c in range(len(COLOURS)) for s in range(len(SHAPES))
                     if (c, s) not in _HELD_OUT], np.int64)             # [20, (colour, shape)]
_HELD = np.array(sorted(_HELD_OUT), np.int64)                            # [4, (colour, shape)]


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  """Sizes of each split and the seed; the defaults are what the registered tasks use."""
  seed: int = 0
  train_images: int = 20000
  eval_images: int = 1000            # per validation / test / heldout split
  train_questions_per_image: int = 4
  train_documents: int = 5000        # interleaved documents
  eval_documents: int = 200
  train_text_documents: int = 10000
  eval_text_documents: int = 200

  def num_images(self, split: str) -> int:
    return self.train_images if split == "train" else self.eval_images


# --- scenes and images -------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Scenes:
  """Objects of a batch of scenes, row-major by cell; -1 marks an empty slot.  # [num, 3]"""
  cells: np.ndarray
  colours: np.ndarray
  shapes: np.ndarray
  focus: np.ndarray       # [num] slot the questions are about (the held-out object in `heldout`)

  def __len__(self) -> int:
    return len(self.cells)

  def objects(self, i: int) -> list[tuple[int, int, int]]:
    """(cell, colour, shape) of scene i, row-major."""
    return [(int(c), int(k), int(s)) for c, k, s in
            zip(self.cells[i], self.colours[i], self.shapes[i]) if c >= 0]


def sample_scenes(rng: np.random.Generator, num: int, held_out: bool) -> Scenes:
  """1-3 objects per scene in distinct cells; colour-shape combos from the split's set."""
  counts = rng.integers(1, MAX_OBJECTS + 1, num)
  valid = np.arange(MAX_OBJECTS)[None] < counts[:, None]                     # [num, 3]
  cells = rng.random((num, 9)).argsort(axis=1)[:, :MAX_OBJECTS]
  cells = np.sort(np.where(valid, cells, 99), axis=1)
  cells = np.where(cells == 99, -1, cells)
  combos = _ALLOWED[rng.integers(0, len(_ALLOWED), (num, MAX_OBJECTS))]      # [num, 3, 2]
  focus = rng.integers(0, counts)
  if held_out:
    rows = np.arange(num)
    combos[rows, focus] = _HELD[rng.integers(0, len(_HELD), num)]
  colours = np.where(valid, combos[..., 0], -1)
  shapes = np.where(valid, combos[..., 1], -1)
  return Scenes(cells.astype(np.int8), colours.astype(np.int8), shapes.astype(np.int8),
                focus.astype(np.int8))


def render(scenes: Scenes, rng: np.random.Generator, image_size: int = 32,
           chunk: int = 1000) -> np.ndarray:
  """uint8 [num, image_size, image_size, 3]: objects drawn at 2x, 2x2-pooled, on a noisy dark
  background. Vectorised over scenes; each object is drawn in a small window around it."""
  out = []
  for start in range(0, len(scenes), chunk):
    part = slice(start, start + chunk)
    out.append(_render_chunk(scenes.cells[part], scenes.colours[part], scenes.shapes[part], rng,
                             image_size))
  return np.concatenate(out) if out else np.zeros((0, image_size, image_size, 3), np.uint8)


def _render_chunk(cells, colours, shapes, rng, size):
  num = len(cells)
  canvas, window = 2 * size, 20             # window: 2x pixels around an object (radius <= 8.5)
  half = window // 2
  pad = half
  img = np.empty((num, size + 2 * pad, size + 2 * pad, 3), np.float32)
  img[:] = rng.uniform(15, 35, (num, 1, 1, 1)).astype(np.float32)
  radius = rng.uniform(5.5, 8.5, (num, MAX_OBJECTS)).astype(np.float32) * canvas / 64
  jitter = rng.uniform(-3, 3, (num, MAX_OBJECTS, 2)).astype(np.float32) * canvas / 64
  grid = np.arange(window, dtype=np.float32) + 0.5
  rows = np.arange(num)[:, None, None]
  cell_size = canvas / 3
  for k in range(MAX_OBJECTS):
    present = cells[:, k] >= 0
    cell = np.maximum(cells[:, k], 0)
    cx = (cell % 3 + 0.5) * cell_size + jitter[:, k, 0]
    cy = (cell // 3 + 0.5) * cell_size + jitter[:, k, 1]
    ox = 2 * (np.floor(cx / 2).astype(np.int64) - half // 2)   # even, so it pools onto pixels
    oy = 2 * (np.floor(cy / 2).astype(np.int64) - half // 2)
    dx = np.abs(ox[:, None, None] + grid[None, None, :] - cx[:, None, None])   # [num, 1, w]
    dy = oy[:, None, None] + grid[None, :, None] - cy[:, None, None]           # [num, w, 1]
    r = radius[:, k][:, None, None]
    circle = dx ** 2 + dy ** 2 <= r ** 2
    square = (dx <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    triangle = (dy >= -r) & (dy <= 0.8 * r) & (dx <= (dy + r) / 1.8)
    cross = (((dx <= 0.3 * r) & (np.abs(dy) <= r)) | ((np.abs(dy) <= 0.3 * r) & (dx <= r)))
    shape = shapes[:, k][:, None, None]
    mask = np.select([shape == 0, shape == 1, shape == 2], [circle, square, triangle], cross)
    mask &= present[:, None, None]
    alpha = mask.reshape(num, half, 2, half, 2).mean(axis=(2, 4), dtype=np.float32)[..., None]
    yi = (oy // 2 + pad)[:, None, None] + np.arange(half)[None, :, None]
    xi = (ox // 2 + pad)[:, None, None] + np.arange(half)[None, None, :]
    colour = RGB[np.maximum(colours[:, k], 0)][:, None, None, :]
    img[rows, yi, xi] = img[rows, yi, xi] * (1 - alpha) + colour * alpha
  img = img[:, pad:pad + size, pad:pad + size]
  img += rng.integers(-8, 9, img.shape, dtype=np.int8)
  return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# --- text --------------------------------------------------------------------------------------

def _object_phrase(colour: int, shape: int) -> str:
  return f"a {COLOURS[colour]} {SHAPES[shape]}"


def describe(objects) -> str:
  """Canonical (row-major) description: `a red circle at the top left and a blue square ...`."""
  return " and ".join(f"{_object_phrase(k, s)} at the {POSITIONS[c]}" for c, k, s in objects)


def _count_phrase(n: int) -> str:
  return f"{NUMBERS[n]} object" + ("" if n == 1 else "s")


def ask(objects, focus: int, question_type: str, rng: np.random.Generator,
        held_out: bool) -> tuple[str, str, str]:
  """(question_type, question, answer) about one scene; falls back when a type is ambiguous."""
  cell, colour, shape = objects[focus]
  shape_count = sum(s == shape for _, _, s in objects)
  combo_count = sum((k, s) == (colour, shape) for _, k, s in objects)
  if question_type == "colour_of" and shape_count > 1:
    question_type = "colour_at"
  if question_type == "where" and combo_count > 1:
    question_type = "shape_at"
  if question_type == "count":
    return question_type, "how many objects are there?", NUMBERS[len(objects)]
  if question_type == "count_shape":
    asked = shape if rng.random() < 0.75 else int(rng.integers(len(SHAPES)))
    answer = NUMBERS[sum(s == asked for _, _, s in objects)]
    return question_type, f"how many {SHAPE_PLURALS[asked]} are there?", answer
  if question_type == "colour_of":
    return question_type, f"what colour is the {SHAPES[shape]}?", COLOURS[colour]
  if question_type == "shape_at":
    return question_type, f"what shape is at the {POSITIONS[cell]}?", SHAPES[shape]
  if question_type == "colour_at":
    return question_type, f"what colour is the object at the {POSITIONS[cell]}?", COLOURS[colour]
  if question_type == "exists":
    if rng.random() < 0.5:
      return question_type, f"is there {_object_phrase(colour, shape)}?", "yes"
    present = {(k, s) for _, k, s in objects}
    pool = [(int(k), int(s)) for k, s in (np.concatenate([_ALLOWED, _HELD]) if held_out
                                          else _ALLOWED) if (k, s) not in present]
    k, s = pool[int(rng.integers(len(pool)))]
    return question_type, f"is there {_object_phrase(k, s)}?", "no"
  if question_type == "where":
    return question_type, f"where is the {COLOURS[colour]} {SHAPES[shape]}?", POSITIONS[cell]
  raise ValueError(f"unknown question type {question_type!r}; choose from {QUESTION_TYPES}")


def _sentence_about(objects, rng: np.random.Generator) -> str:
  """One sentence about a scene (used after an image, and in text documents)."""
  cell, colour, shape = objects[int(rng.integers(len(objects)))]
  templates = (
      lambda: f"it shows {describe(objects)}.",
      lambda: f"in this picture there is {describe(objects)}.",
      lambda: f"there {'is' if len(objects) == 1 else 'are'} {_count_phrase(len(objects))} in it.",
      lambda: f"the {SHAPES[shape]} at the {POSITIONS[cell]} is {COLOURS[colour]}.",
  )
  return templates[int(rng.integers(len(templates)))]()


def _text_document(objects, rng: np.random.Generator) -> str:
  sentences = [f"there is {describe(objects)}."]
  for _ in range(int(rng.integers(1, 4))):
    cell, colour, shape = objects[int(rng.integers(len(objects)))]
    sentences.append(rng.choice([
        f"the {SHAPES[shape]} at the {POSITIONS[cell]} is {COLOURS[colour]}.",
        f"there {'is' if len(objects) == 1 else 'are'} {_count_phrase(len(objects))}.",
        f"the {COLOURS[colour]} {SHAPES[shape]} is at the {POSITIONS[cell]}.",
        f"a scene with {describe(objects)}.",
    ]))
  return " ".join(sentences)


def _interleaved_document(scenes: Scenes, image_ids: np.ndarray,
                          rng: np.random.Generator) -> tuple[list[str], list[int]]:
  """Texts and, per image, the index of the text it precedes (MMC4 `matched_text_index`)."""
  count = len(image_ids)
  texts = ["here is a picture." if count == 1 else f"here are {NUMBERS[count]} pictures."]
  index = []
  for image_id in image_ids:
    objects = scenes.objects(int(image_id))
    if rng.random() < 0.3:
      texts.append(f"the next picture has {_count_phrase(len(objects))}.")
    index.append(len(texts))
    texts.append(_sentence_about(objects, rng))
  if rng.random() < 0.3:
    texts.append("that is all.")
  return texts, index


# --- splits ------------------------------------------------------------------------------------

def _rng(config: WorldConfig, split: str, stream: str) -> np.random.Generator:
  key = [config.seed, SPLITS.index(split), ("scenes", "render", "vqa", "docs", "text",
                                            "captions").index(stream)]
  return np.random.default_rng(np.random.SeedSequence(key))


class SplitData:
  """Images and records of one split. Each part is generated on first use from its own random
  stream, so what is built (and in which order) never changes the result."""

  def __init__(self, config: WorldConfig, split: str):
    if split not in SPLITS:
      raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    self.config, self.split = config, split
    self.held_out, self.train = split == "heldout", split == "train"
    self.num_images = config.num_images(split)

  @functools.cached_property
  def scenes(self) -> Scenes:
    return sample_scenes(_rng(self.config, self.split, "scenes"), self.num_images,
                         self.held_out)

  @functools.cached_property
  def images(self) -> np.ndarray:
    """uint8 [num_images, 32, 32, 3]"""
    return render(self.scenes, _rng(self.config, self.split, "render"))

  @functools.cached_property
  def image_pool(self) -> tf.Tensor:
    """`images` as one (eager) TF constant that every task's dataset of this split gathers from."""
    with tf.init_scope():
      return tf.constant(self.images)

  @functools.cached_property
  def captions(self) -> dict:
    """image_id, prompt (`an image of`), answer (the canonical caption), question_type."""
    n = self.num_images
    return {"image_id": np.arange(n, dtype=np.int32), "prompt": [CAPTION_PROMPT] * n,
            "answer": [describe(self.scenes.objects(i)) for i in range(n)],
            "question_type": ["caption"] * n}

  @functools.cached_property
  def vqa(self) -> dict:
    """image_id, prompt (`Question: ... Answer:`), answer, question_type."""
    rng = _rng(self.config, self.split, "vqa")
    vqa = {"image_id": [], "prompt": [], "answer": [], "question_type": []}
    per_image = self.config.train_questions_per_image
    for i in range(self.num_images):
      objects = self.scenes.objects(i)
      if self.train:
        types = rng.choice(len(QUESTION_TYPES), per_image, replace=False)
      else:
        types = [i % len(QUESTION_TYPES)]      # balanced over types in evaluation splits
      for t in types:
        qtype, question, answer = ask(objects, int(self.scenes.focus[i]), QUESTION_TYPES[t],
                                      rng, self.held_out)
        vqa["image_id"].append(i)
        vqa["prompt"].append(f"Question: {question} Answer:")
        vqa["answer"].append(answer)
        vqa["question_type"].append(qtype)
    vqa["image_id"] = np.asarray(vqa["image_id"], np.int32)
    return vqa

  @functools.cached_property
  def interleaved(self) -> dict:
    """texts (lists), image_ids (into `images`), image_text_index (per document)."""
    rng = _rng(self.config, self.split, "docs")
    num_docs = self.config.train_documents if self.train else self.config.eval_documents
    docs = {"texts": [], "image_ids": [], "image_text_index": []}
    for _ in range(num_docs):
      count = 1 if rng.random() < 0.3 else int(rng.integers(2, 6))
      image_ids = rng.integers(0, self.num_images, count)
      texts, index = _interleaved_document(self.scenes, image_ids, rng)
      docs["texts"].append(texts)
      docs["image_ids"].append(image_ids.astype(np.int32))
      docs["image_text_index"].append(np.asarray(index, np.int32))
    return docs

  @functools.cached_property
  def text(self) -> dict:
    """text: documents about scenes of their own (no images)."""
    rng = _rng(self.config, self.split, "text")
    num = self.config.train_text_documents if self.train else self.config.eval_text_documents
    scenes = sample_scenes(rng, num, self.held_out)
    return {"text": [_text_document(scenes.objects(i), rng) for i in range(num)]}


@functools.lru_cache(maxsize=8)
def split_data(config: WorldConfig, split: str) -> SplitData:
  """The (per-process cached) data of `split`; parts are generated lazily."""
  return SplitData(config, split)


def dataset(kind: str, split: str, config: WorldConfig = WorldConfig()) -> tf.data.Dataset:
  """Raw records of one kind, in a fixed order (a seqio `FunctionDataSource` dataset_fn body).

  captions/vqa: image uint8 [32, 32, 3], prompt, answer, question_type (strings).
  interleaved: texts string [m], images uint8 [n, 32, 32, 3], image_text_index int32 [n].
  text: text.
  """
  data = split_data(config, split)
  if kind == "text":
    return tf.data.Dataset.from_tensor_slices({"text": tf.constant(data.text["text"])})
  pool = data.image_pool
  if kind in ("captions", "vqa"):
    records = getattr(data, kind)
    ds = tf.data.Dataset.from_tensor_slices(
        {k: (np.asarray(v) if k == "image_id" else tf.constant(v, tf.string))
         for k, v in records.items()})
    return ds.map(tf.autograph.experimental.do_not_convert(
        lambda ex: {"image": tf.gather(pool, ex.pop("image_id")), **ex}))
  if kind == "interleaved":
    docs = data.interleaved

    def ragged(rows, dtype):
      lengths = [len(r) for r in rows]
      flat = list(itertools.chain.from_iterable(rows))
      return tf.RaggedTensor.from_row_lengths(tf.constant(flat, dtype), lengths)
    ds = tf.data.Dataset.from_tensor_slices({
        "texts": ragged(docs["texts"], tf.string),
        "image_ids": ragged(docs["image_ids"], tf.int32),
        "image_text_index": ragged(docs["image_text_index"], tf.int32)})
    return ds.map(tf.autograph.experimental.do_not_convert(
        lambda ex: {"texts": ex["texts"], "images": tf.gather(pool, ex["image_ids"]),
                    "image_text_index": ex["image_text_index"]}))
  raise ValueError(f"unknown shapes kind {kind!r}; choose one of {KINDS}")


def eval_examples(kind: str, split: str, config: WorldConfig = WorldConfig(),
                  limit: Optional[int] = None) -> list[dict]:
  """Evaluation records as numpy/strings: images [1, 32, 32, 3], prompt, answer, question_type.

  kind: "captions" (prompt `an image of`, answer the canonical caption) or "vqa" (prompt
  `Question: ... Answer:`, answer the reference answer).
  """
  if kind not in ("captions", "vqa"):
    raise ValueError(f"eval_examples: kind must be 'captions' or 'vqa', got {kind!r}")
  data = split_data(config, split)
  records = getattr(data, kind)
  count = len(records["prompt"]) if limit is None else min(limit, len(records["prompt"]))
  return [{"images": data.images[records["image_id"][i]][None],
           "prompt": records["prompt"][i], "answer": records["answer"][i],
           "question_type": records["question_type"][i]} for i in range(count)]


# --- vocabulary --------------------------------------------------------------------------------

SPM_PIECES = 128          # at most; the world needs ~94 pieces, so the Kosmos vocab is ~101
_VOCAB_VERSION = "shapes-spm-v1"


def corpus_sentences() -> list[str]:
  """A fixed enumeration of the world's sentences (independent of seed) to train the vocab on."""
  rng = np.random.default_rng(12345)
  lines = []
  for colour, shape, cell in itertools.product(range(len(COLOURS)), range(len(SHAPES)),
                                               range(len(POSITIONS))):
    objects = [(cell, colour, shape)]
    lines.append(f"{CAPTION_PROMPT} {describe(objects)}")
    lines.append(_text_document(objects, rng))
    for qtype in QUESTION_TYPES:
      _, question, answer = ask(objects, 0, qtype, rng, held_out=True)
      lines.append(f"Question: {question} Answer: {answer}")
  scenes = sample_scenes(rng, 400, held_out=True)
  for i in range(len(scenes)):
    texts, _ = _interleaved_document(scenes, np.array([i, (i + 1) % len(scenes)]), rng)
    lines.append(" ".join(texts))
    lines.append(f"{CAPTION_PROMPT} {describe(scenes.objects(i))}")
  lines += [f"here are {NUMBERS[n]} pictures." for n in range(2, len(NUMBERS))]
  lines += ["here is a picture. that is all.", "there are zero objects."]
  for plural in SHAPE_PLURALS:
    lines += [f"how many {plural} are there? {n}" for n in NUMBERS[:4]]
  # Every word equally often, alone and before punctuation, so each becomes one piece.
  lexicon = sorted({w for line in lines for w in re.findall(r"[A-Za-z]+", line)})
  lines += [" ".join(lexicon)] * 50
  lines += [word + mark for word in lexicon for mark in ".?:"]
  return lines


def cache_dir() -> str:
  return os.environ.get("KOSMOS_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache",
                                                         "kosmos_jax"))


def _vocab_digest() -> str:
  text = "\n".join(corpus_sentences())
  return hashlib.sha256(f"{_VOCAB_VERSION}|{SPM_PIECES}|{text}".encode()).hexdigest()[:16]


def shapes_vocabulary_file() -> str:
  """Path of the cached shapes SentencePiece model (trained on first use, atomically)."""
  path = os.path.join(cache_dir(), f"shapes_spm_{_vocab_digest()}.model")
  if not os.path.exists(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(path)) as tmp:
      corpus = os.path.join(tmp, "corpus.txt")
      with open(corpus, "w") as f:
        f.write("\n".join(corpus_sentences()) + "\n")
      model = vocab_lib.train_sentencepiece([corpus], SPM_PIECES, os.path.join(tmp, "shapes"),
                                            hard_vocab_limit=False, character_coverage=1.0)
      os.replace(model, path)
  return path


class ShapesVocabulary(vocab_lib.KosmosVocabulary):
  """The shapes world's KosmosVocabulary; trains and caches its SentencePiece model on demand."""

  def __init__(self):
    super().__init__(sentencepiece_model_file="")

  def _read_model_bytes(self) -> bytes:
    self._model_file = shapes_vocabulary_file()
    return super()._read_model_bytes()

  @property
  def sentencepiece_model_file(self) -> str:
    _ = self.sp_model   # resolves (and if needed trains) the cached file
    return self._model_file
