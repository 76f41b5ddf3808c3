"""Task and mixture registration. Importing this module registers the shapes-world tasks/mixtures.

Every Kosmos task has the same output features (`output_features(vocab)`), so any tasks mix.
Data teams add their own from gin, without code: each `*_task` configurable registers a task and
returns its name, and `token_mixture` registers a mixture whose sampling rates give a chosen
number of tokens per step for each task (the paper: 0.5M text, 0.5M caption, 0.2M interleaved).
Registering again under the same name replaces the old entry, so re-imports are harmless.
"""
from __future__ import annotations

import functools
from typing import Callable, Mapping, Optional, Sequence, Union

import gin
import numpy as np
import seqio
import tensorflow as tf

from kosmos_jax.data import images as images_lib
from kosmos_jax.data import preprocessors as pp
from kosmos_jax.data import synthetic
from kosmos_jax.data.vocab import KosmosVocabulary

# Tokens per training step in Kosmos-1 (docs/data.md §7).
PAPER_TOKENS_PER_STEP = {"text": 0.5e6, "image_caption": 0.5e6, "interleaved": 0.2e6}
SHAPES_TASKS = {kind: f"shapes_{kind}" for kind in synthetic.KINDS}
# Placeholders per image the built-in shapes mixtures are balanced for (the `tiny` preset).
SHAPES_NUM_IMAGE_TOKENS = 8
# Shapes records are i.i.d. already; a small buffer only varies the order between epochs.
SHAPES_SHUFFLE_BUFFER = 256
# Task shuffle buffer chosen from the source (see add_task).
AUTO_SHUFFLE = "auto"
ShuffleBuffer = Union[int, None, str]
# (task name, examples measured) -> per-example task tokens and images, for mixture rates.
_TOKEN_STATS: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}


def _configurable(fn):
  """gin.configurable that tolerates `importlib.reload` of this module (keeps the first one)."""
  try:
    return gin.configurable(fn)
  except ValueError:   # already registered: the registered function shares this module's globals
    return fn


def output_features(vocabulary: KosmosVocabulary) -> dict[str, seqio.Feature]:
  """The task features every Kosmos task emits (see preprocessors.py)."""
  return {
      "targets": seqio.Feature(vocabulary, add_eos=False, dtype=tf.int32),
      "loss_weights": seqio.ContinuousFeature(dtype=tf.int32, rank=1),
      "images": seqio.ContinuousFeature(dtype=tf.uint8, rank=4),
  }


def add_task(name: str, source: seqio.DataSource, preprocessors: Sequence[Callable],
             vocabulary: KosmosVocabulary, shuffle_buffer_size: ShuffleBuffer = AUTO_SHUFFLE,
             metric_fns: Sequence[Callable] = (), postprocess_fn: Optional[Callable] = None) -> str:
  """Registers (or replaces) a Kosmos task; returns its name.

  shuffle_buffer_size: examples shuffled after preprocessing (decoded images: the buffer is part
  of every data checkpoint, ~150 KB per example at 224 px). "auto": none for sources that
  shuffle their record index themselves (`kosmos_jax.data.sources`), 1000 otherwise.
  """
  if shuffle_buffer_size == AUTO_SHUFFLE:
    shuffle_buffer_size = None if source.performs_internal_shuffling else 1000
  seqio.TaskRegistry.remove(name)
  for key in [k for k in _TOKEN_STATS if k[0] == name]:
    del _TOKEN_STATS[key]
  seqio.TaskRegistry.add(name, source=source, preprocessors=list(preprocessors),
                         output_features=output_features(vocabulary), metric_fns=list(metric_fns),
                         postprocess_fn=postprocess_fn, shuffle_buffer_size=shuffle_buffer_size)
  return name


def _decode_step(encoded: bool, image_key: str, image_size: int, max_image_pixels: int,
                 index_key: Optional[str] = None) -> list[Callable]:
  if not encoded:
    return []
  return [functools.partial(pp.decode_images, image_key=image_key, image_size=image_size,
                            index_key=index_key, max_image_pixels=max_image_pixels)]


@_configurable
def text_task(name: str, source: seqio.DataSource, vocabulary: KosmosVocabulary,
              text_key: str = "text", shuffle_buffer_size: ShuffleBuffer = AUTO_SHUFFLE) -> str:
  """Text documents: `<s> text </s>`."""
  steps = [functools.partial(pp.text_to_sequence, text_key=text_key)]
  return add_task(name, source, steps, vocabulary, shuffle_buffer_size=shuffle_buffer_size)


@_configurable
def image_text_task(name: str, source: seqio.DataSource, vocabulary: KosmosVocabulary,
                    image_key: str = "image", text_key: str = "text",
                    prompt_key: Optional[str] = None, prompt_loss: bool = True,
                    encoded: bool = True, image_size: int = pp.DEFAULT_IMAGE_SIZE,
                    max_image_pixels: int = images_lib.DEFAULT_MAX_IMAGE_PIXELS,
                    shuffle_buffer_size: ShuffleBuffer = AUTO_SHUFFLE) -> str:
  """Image-caption pairs (or VQA with `prompt_key`): `<s> <image> ... </image> text </s>`.

  encoded: the image feature holds encoded bytes to decode, resize and crop to `image_size`
  (images over `max_image_pixels` are refused unread); False means it is already uint8
  [H, W, 3] (the converter resizes to the model's size).
  shuffle_buffer_size: see `add_task`.
  """
  steps = _decode_step(encoded, image_key, image_size, max_image_pixels)
  steps.append(functools.partial(
      pp.image_text_to_sequence, image_key=image_key, text_key=text_key, prompt_key=prompt_key,
      prompt_loss=prompt_loss))
  return add_task(name, source, steps, vocabulary, shuffle_buffer_size=shuffle_buffer_size)


@_configurable
def interleaved_task(name: str, source: seqio.DataSource, vocabulary: KosmosVocabulary,
                     texts_key: str = "texts", images_key: str = "images",
                     image_index_key: str = "image_text_index", max_images: int = 5,
                     single_image_drop_rate: float = 0.5, seed: int = 0, encoded: bool = True,
                     image_size: int = pp.DEFAULT_IMAGE_SIZE,
                     max_image_pixels: int = images_lib.DEFAULT_MAX_IMAGE_PIXELS,
                     shuffle_buffer_size: ShuffleBuffer = AUTO_SHUFFLE) -> str:
  """Interleaved documents (MMC4-style texts + images + matched text index); images that cannot
  be decoded are removed from their document (counted), see `image_text_task` for the rest."""
  # Dropping needs only the image count, so it runs before the (costly) decoding.
  steps = [functools.partial(pp.drop_single_image_documents, images_key=images_key,
                             texts_key=texts_key, rate=single_image_drop_rate, seed=seed)]
  steps += _decode_step(encoded, images_key, image_size, max_image_pixels, image_index_key)
  steps.append(functools.partial(pp.interleaved_to_sequence, texts_key=texts_key,
                                 images_key=images_key, image_index_key=image_index_key,
                                 max_images=max_images))
  return add_task(name, source, steps, vocabulary, shuffle_buffer_size=shuffle_buffer_size)


@_configurable
def instruction_task(name: str, source: seqio.DataSource, vocabulary: KosmosVocabulary,
                     instruction_key: str = "instruction", input_key: str = "input",
                     output_key: str = "output") -> str:
  """Language-only instruction data; loss on the output only."""
  steps = [functools.partial(pp.instruction_to_sequence, instruction_key=instruction_key,
                             input_key=input_key, output_key=output_key)]
  return add_task(name, source, steps, vocabulary)


# --- token-balanced mixtures -------------------------------------------------------------------

def _task_token_stats(task_name: str, num_examples: int) -> tuple[np.ndarray, np.ndarray]:
  """Task tokens and images of the first examples of the task's train split (cached until the
  task is registered again).  # [n], [n]"""
  key = (task_name, num_examples)
  if key not in _TOKEN_STATS:
    _TOKEN_STATS[key] = _measure_task(task_name, num_examples)
  return _TOKEN_STATS[key]


def _measure_task(task_name: str, num_examples: int) -> tuple[np.ndarray, np.ndarray]:
  task = seqio.get_mixture_or_task(task_name)
  ds = task.get_dataset(sequence_length=None, split="train", shuffle=False, num_epochs=1,
                        try_in_mem_cache=False).take(num_examples)
  tokens, images = [], []
  for ex in ds.as_numpy_iterator():
    tokens.append(len(ex["targets"]))
    images.append(len(ex["images"]))
  if not tokens:
    raise ValueError(f"task {task_name!r} has no train examples to measure its length")
  return np.asarray(tokens), np.asarray(images)


def mean_model_tokens(task_name: str, num_image_tokens: int, num_examples: int = 256,
                      length: Optional[int] = None) -> float:
  """Average tokens per example once the converter expands image slots, capped at the row
  `length` if given (longer examples are truncated to it)."""
  tokens, images = _task_token_stats(task_name, num_examples)
  expanded = tokens + num_image_tokens * images
  if length is not None:
    expanded = np.minimum(expanded, length)
  return float(expanded.mean())


def token_rates(tokens_per_step: Mapping[str, float], num_image_tokens: int,
                num_examples: int = 256, length: Optional[int] = None) -> dict[str, float]:
  """Example-sampling rates that give each task its share of tokens: share / mean length."""
  return {name: share / mean_model_tokens(name, num_image_tokens, num_examples, length)
          for name, share in tokens_per_step.items()}


def interleave_by_rate(datasets: Sequence[tf.data.Dataset], rates: Sequence[float],
                       seed: Optional[int] = None) -> tf.data.Dataset:
  """A seqio `sample_fn` that takes examples in a fixed, evenly spread order with the given
  rates (each next example comes from the task furthest behind its share), instead of drawing
  them at random. Every stretch of the stream then has the mixture's proportions, as the
  paper's fixed per-step token split asks; task order inside each task still follows the seed.
  """
  del seed   # the schedule is deterministic; the tasks' own shuffles use the seed
  weights = np.asarray(rates, np.float64)
  if weights.ndim != 1 or not len(weights) or (weights <= 0).any():
    raise ValueError(f"interleave_by_rate: rates must be positive, got {list(rates)}")
  weights = tf.constant(weights / weights.sum())

  def pick(taken, unused):
    index = tf.argmax(weights * tf.cast(tf.reduce_sum(taken) + 1, tf.float64)
                      - tf.cast(taken, tf.float64), output_type=tf.int64)
    return taken + tf.one_hot(index, len(rates), dtype=tf.int64), index
  choices = tf.data.Dataset.range(2**62).scan(tf.zeros([len(rates)], tf.int64),
                                              pp.no_autograph(pick))
  return tf.data.Dataset.choose_from_datasets(list(datasets), choices,
                                              stop_on_empty_dataset=True)


SAMPLE_FNS = {"interleave": interleave_by_rate,
              "random": functools.partial(tf.data.Dataset.sample_from_datasets,
                                          stop_on_empty_dataset=True)}


@_configurable
def token_mixture(name: str, tokens_per_step: Union[Mapping[str, float],
                                                   Sequence[tuple[str, float]]],
                  num_image_tokens: int, num_examples: int = 256,
                  sampling: str = "interleave", length: Optional[int] = None) -> str:
  """Registers a mixture that gives each task its number of tokens per step.

  tokens_per_step: task name -> tokens (or any proportional number), e.g. the paper's
    {"my_text": 0.5e6, "my_captions": 0.5e6, "my_interleaved": 0.2e6}.
  num_image_tokens: the model's placeholders per image; image tokens count as tokens.
  sampling: "interleave" (fixed evenly spread order, `interleave_by_rate`) or "random"
    (seqio's default i.i.d. draws; proportions then hold only on average).
  length: the row length, when tasks have examples longer than a row (they are truncated).
  Example rates (share / mean tokens per example) are measured lazily, at the first
  `get_dataset`, on the first `num_examples` of each task's train split.
  """
  shares = dict(tokens_per_step)
  if not shares or any(v <= 0 for v in shares.values()):
    raise ValueError(f"token_mixture {name!r}: tokens_per_step must be positive, got {shares}")
  if sampling not in SAMPLE_FNS:
    raise ValueError(f"token_mixture {name!r}: sampling={sampling!r}; choose one of "
                     f"{sorted(SAMPLE_FNS)}")

  def rate(task_name, share):
    return lambda task: share / mean_model_tokens(task_name, num_image_tokens, num_examples,
                                                  length)
  seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, [(task, rate(task, share)) for task, share in shares.items()],
                            sample_fn=SAMPLE_FNS[sampling])
  return name


# --- gin access to generic sources -------------------------------------------------------------

_TFEXAMPLE_TYPES = {
    "bytes": lambda: tf.io.FixedLenFeature([], tf.string),
    "int": lambda: tf.io.FixedLenFeature([], tf.int64),
    "float": lambda: tf.io.FixedLenFeature([], tf.float32),
    "bytes_list": lambda: tf.io.RaggedFeature(tf.string),
    "int_list": lambda: tf.io.RaggedFeature(tf.int64),
    "float_list": lambda: tf.io.RaggedFeature(tf.float32),
}


@_configurable
def tfexample_source(split_to_filepattern: Mapping[str, Union[str, Sequence[str]]],
                     features: Mapping[str, str]) -> seqio.TFExampleDataSource:
  """TFRecord files of tf.train.Example; `features` maps a name to one of
  bytes, int, float (scalars) or bytes_list, int_list, float_list (variable length).
  Integer features are read as int32 (what the preprocessors expect)."""
  unknown = {k: v for k, v in features.items() if v not in _TFEXAMPLE_TYPES}
  if unknown:
    raise ValueError(f"tfexample_source: unknown feature types {unknown}; use one of "
                     f"{sorted(_TFEXAMPLE_TYPES)}")
  description = {name: _TFEXAMPLE_TYPES[kind]() for name, kind in features.items()}
  ints = [name for name, kind in features.items() if kind in ("int", "int_list")]

  def to_int32(ds):
    def cast(ex):
      ex = dict(ex)
      for name in ints:
        ex[name] = tf.cast(ex[name], tf.int32)
      return ex
    return ds.map(pp.no_autograph(cast), num_parallel_calls=tf.data.AUTOTUNE)
  return _CastingTFExampleDataSource(split_to_filepattern, description, to_int32)


class _CastingTFExampleDataSource(seqio.TFExampleDataSource):
  """TFExampleDataSource that post-processes parsed examples (int64 -> int32)."""

  def __init__(self, split_to_filepattern, feature_description, post_fn):
    super().__init__(split_to_filepattern, feature_description)
    self._post_fn = post_fn

  def get_dataset(self, *args, **kwargs) -> tf.data.Dataset:
    return self._post_fn(super().get_dataset(*args, **kwargs))


try:   # lets gin build vocabularies: `team/KosmosVocabulary.sentencepiece_model_file = "..."`
  gin.external_configurable(KosmosVocabulary, module="kosmos_jax.data")
  gin.external_configurable(synthetic.ShapesVocabulary, module="kosmos_jax.data")
except ValueError:   # already registered (a reload of this module)
  pass


# --- the shapes world --------------------------------------------------------------------------

def _shapes_dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None, *,
                       kind: str, config: synthetic.WorldConfig) -> tf.data.Dataset:
  del shuffle_files, seed   # records come in a fixed order; tasks shuffle after preprocessing
  return synthetic.dataset(kind, split, config)


def register_shapes_tasks(config: synthetic.WorldConfig = synthetic.WorldConfig(),
                          prefix: str = "shapes",
                          num_image_tokens: int = SHAPES_NUM_IMAGE_TOKENS) -> dict[str, str]:
  """Registers `{prefix}_captions/_vqa/_interleaved/_text` and two mixtures:
  `{prefix}_pretrain` (the paper's 0.5 : 0.5 : 0.2 text : caption : interleaved token split)
  and `{prefix}_all` (30 % caption, 50 % VQA, 10 % interleaved, 10 % text tokens).
  Returns kind -> task name.
  """
  vocabulary = synthetic.ShapesVocabulary()

  def source(kind):
    return seqio.FunctionDataSource(
        functools.partial(_shapes_dataset_fn, kind=kind, config=config), splits=synthetic.SPLITS)
  names = {kind: f"{prefix}_{kind}" for kind in synthetic.KINDS}
  buffer = SHAPES_SHUFFLE_BUFFER
  for kind in ("captions", "vqa"):
    add_task(names[kind], source(kind), [functools.partial(
        pp.image_text_to_sequence, image_key="image", text_key="answer", prompt_key="prompt")],
             vocabulary, shuffle_buffer_size=buffer)
  add_task(names["interleaved"], source("interleaved"), [
      functools.partial(pp.drop_single_image_documents, rate=0.5, seed=config.seed),
      pp.interleaved_to_sequence], vocabulary, shuffle_buffer_size=buffer)
  add_task(names["text"], source("text"), [pp.text_to_sequence], vocabulary,
           shuffle_buffer_size=buffer)
  token_mixture(f"{prefix}_pretrain", {
      names["text"]: PAPER_TOKENS_PER_STEP["text"],
      names["captions"]: PAPER_TOKENS_PER_STEP["image_caption"],
      names["interleaved"]: PAPER_TOKENS_PER_STEP["interleaved"]}, num_image_tokens)
  token_mixture(f"{prefix}_all", {names["captions"]: 0.3, names["vqa"]: 0.5,
                                  names["interleaved"]: 0.1, names["text"]: 0.1},
                num_image_tokens)
  return names


register_shapes_tasks()
