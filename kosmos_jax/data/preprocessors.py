"""SeqIO preprocessors for Kosmos data: image decoding, and the paper's sequence formats.

Every sequence builder emits the same task features, so any mix of tasks can be sampled together:
  targets       int32 [tokens]    the sequence after `<s>`, ending in `</s>`
  loss_weights  int32 [tokens]    1 where the target token is trained
  images        uint8 [num_images, H, W, 3]   in the order of their image slots (0 for text)
An image slot is the pair `<image> </image>`; the feature converter expands it to `<image>`,
`num_image_tokens` placeholders and `</image>` for the model, so tasks do not depend on the
model's resampler size (docs/data.md §2).

Records that cannot be used are dropped and counted by reason (`record_counts()`); the counters
are tf.Variables that a trainer can log and checkpoint (`counter_variables()`, which
`pipeline.DataIterator.save` includes).
"""
from __future__ import annotations

import threading
from typing import Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from kosmos_jax.data import images as images_lib
from kosmos_jax.data.images import DEFAULT_IMAGE_SIZE
from kosmos_jax.data.vocab import KosmosVocabulary

TASK_FEATURE_KEYS = ("targets", "loss_weights", "images")

# --- counters of dropped records ---------------------------------------------------------------

_COUNTERS: dict[str, tf.Variable] = {}
_COUNTERS_LOCK = threading.Lock()
_IN, _OUT = "/in", "/out"


def record_counter(reason: str) -> tf.Variable:
  """The int64 counter for `reason`, created on first use (outside any tf.function)."""
  with _COUNTERS_LOCK:
    if reason not in _COUNTERS:
      with tf.init_scope():
        _COUNTERS[reason] = tf.Variable(0, dtype=tf.int64, trainable=False,
                                        name="records_" + reason.replace("/", "_"))
    return _COUNTERS[reason]


def counter_variables() -> dict[str, tf.Variable]:
  """All counters, e.g. to add to the trainer's `tf.train.Checkpoint` next to the iterator."""
  with _COUNTERS_LOCK:
    return dict(_COUNTERS)


def record_counts() -> dict[str, int]:
  """Records dropped so far in this process, by reason (plus `truncated_to_row_length`: kept
  examples cut to the row length). For the trainer to log."""
  counts = {}
  variables = counter_variables()
  for name, variable in variables.items():
    if name.endswith(_IN):
      reason = name[:-len(_IN)]
      counts[reason] = int(variable.numpy()) - int(variables[reason + _OUT].numpy())
    elif not name.endswith(_OUT):
      counts[name] = int(variable.numpy())
  return counts


def no_autograph(fn):
  """Marks a tf.data function as plain TF: skipping autograph makes tracing many times faster."""
  return tf.autograph.experimental.do_not_convert(fn)


def stateful_pipeline_options() -> tf.data.Options:
  """Options that let an iterator over a pipeline with counters be checkpointed.

  The counter updates are the only external state; they are saved with the counters themselves
  (`counter_variables()`), not inside the iterator checkpoint.
  """
  options = tf.data.Options()
  options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
  return options


def filter_and_count(ds: tf.data.Dataset, keep_fn, reason: str) -> tf.data.Dataset:
  """`ds.filter(keep_fn)` that counts the dropped records under `reason`."""
  counter = record_counter(reason)

  def keep(ex):
    ok = tf.convert_to_tensor(keep_fn(ex), tf.bool)
    with tf.control_dependencies([counter.assign_add(tf.cast(tf.logical_not(ok), tf.int64))]):
      return tf.identity(ok)
  return ds.filter(no_autograph(keep)).with_options(stateful_pipeline_options())


def filter_by_code(ds: tf.data.Dataset, code_key: str, reasons: Sequence[str],
                   tally_keys: Sequence[str] = ()) -> tf.data.Dataset:
  """Keeps examples whose int `code_key` is 0; code i > 0 is counted as `reasons[i - 1]`.

  Lets one map compute every reason to drop an example (one tf.data stage instead of several).
  Boolean features named in `tally_keys` are counted too (kept examples included), e.g. how
  many examples were truncated.
  """
  counters = [record_counter(reason) for reason in reasons]
  tallies = [(key, record_counter(key)) for key in tally_keys]

  def keep(ex):
    code = ex[code_key]
    updates = [counter.assign_add(tf.cast(tf.equal(code, i + 1), tf.int64))
               for i, counter in enumerate(counters)]
    updates += [counter.assign_add(tf.cast(ex[key], tf.int64)) for key, counter in tallies]
    with tf.control_dependencies(updates):
      return tf.equal(code, 0)
  return ds.filter(no_autograph(keep)).with_options(stateful_pipeline_options())


def map_skipping_errors(ds: tf.data.Dataset, fn, reason: str) -> tf.data.Dataset:
  """`ds.map(fn)` where records on which `fn` raises (corrupt images) are dropped and counted.

  The count is exact once the records in flight have come out; it may briefly run ahead by the
  number of records being mapped in parallel.
  """
  seen, kept = record_counter(reason + _IN), record_counter(reason + _OUT)

  def tick(variable):
    def fn_(ex):
      with tf.control_dependencies([variable.assign_add(1)]):
        return tf.nest.map_structure(tf.identity, ex)
    return no_autograph(fn_)
  ds = ds.map(tick(seen)).map(no_autograph(fn), num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.ignore_errors(log_warning=True).map(tick(kept))
  return ds.with_options(stateful_pipeline_options())


# --- images ---------------------------------------------------------------------------------------

def decode_images(ds: tf.data.Dataset, image_key: str = "image",
                  image_size: int = DEFAULT_IMAGE_SIZE, index_key: Optional[str] = None,
                  max_image_pixels: int = images_lib.DEFAULT_MAX_IMAGE_PIXELS) -> tf.data.Dataset:
  """Decodes encoded image bytes in `image_key` (a scalar or a vector of images) to uint8.

  A scalar becomes [image_size, image_size, 3]: a record whose image cannot be used is dropped
  and counted by reason (`images.IMAGE_REASONS`: image_empty, image_corrupt, image_too_large).
  A vector becomes [num, image_size, image_size, 3]: unusable images are removed from the
  document (each counted by reason) together with their entry in `index_key` (the matched text
  index of interleaved documents), and the document is kept.
  """
  if image_key not in ds.element_spec:
    raise ValueError(f"decode_images: no feature {image_key!r}; features are "
                     f"{sorted(ds.element_spec)}")
  scalar = ds.element_spec[image_key].shape.rank == 0
  counters = [record_counter(reason) for reason in images_lib.IMAGE_REASONS]
  spec = (tf.TensorSpec([image_size, image_size, 3], tf.uint8), tf.TensorSpec([], tf.int32))

  def decode_one(encoded):
    return images_lib.decode_image_checked(encoded, max_image_pixels, image_size)

  def decode(ex):
    ex = dict(ex)
    encoded = ex[image_key]
    if scalar:
      ex[image_key], ex["_image_code"] = decode_one(encoded)
      return ex
    images, codes = tf.map_fn(decode_one, encoded, fn_output_signature=spec)
    updates = [counter.assign_add(tf.reduce_sum(tf.cast(tf.equal(codes, i + 1), tf.int64)))
               for i, counter in enumerate(counters)]
    good = tf.equal(codes, 0)
    with tf.control_dependencies(updates):
      ex[image_key] = tf.boolean_mask(images, good)
    if index_key is not None:
      ex[index_key] = tf.boolean_mask(ex[index_key], good)
    return ex
  ds = ds.map(no_autograph(decode), num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.with_options(stateful_pipeline_options())
  if not scalar:
    return ds
  ds = filter_by_code(ds, "_image_code", images_lib.IMAGE_REASONS)
  return ds.map(no_autograph(lambda ex: {k: v for k, v in ex.items() if k != "_image_code"}))


def _relaxed_images(images: tf.Tensor) -> tf.Tensor:
  """Static shape [None, None, None, 3], so tasks with any image size (or none) can be mixed."""
  return tf.compat.v1.placeholder_with_default(tf.cast(images, tf.uint8), [None, None, None, 3])


def no_images() -> tf.Tensor:
  """The `images` feature of a text-only example: uint8 [0, H?, W?, 3]."""
  return _relaxed_images(tf.zeros([0, 1, 1, 3], tf.uint8))


def _check_image_feature(ds: tf.data.Dataset, key: str, rank: int, caller: str) -> None:
  spec = ds.element_spec.get(key)
  if spec is None:
    raise ValueError(f"{caller}: no feature {key!r}; features are {sorted(ds.element_spec)}")
  if spec.dtype != tf.uint8 or spec.shape.rank != rank:
    what = "[H, W, 3]" if rank == 3 else "[num_images, H, W, 3]"
    raise ValueError(
        f"{caller}: feature {key!r} must be decoded uint8 {what}, got {spec.dtype.name} of rank "
        f"{spec.shape.rank}; put `decode_images` before this preprocessor")


# --- sequences ---------------------------------------------------------------------------------

def _vocabulary(output_features: Mapping[str, seqio.Feature]) -> KosmosVocabulary:
  vocab = output_features["targets"].vocabulary
  if not isinstance(vocab, KosmosVocabulary):
    raise ValueError("Kosmos sequence preprocessors need output_features['targets'] to use a "
                     f"KosmosVocabulary, got {type(vocab).__name__}")
  return vocab


def _encode(vocab: KosmosVocabulary, text: tf.Tensor) -> tf.Tensor:
  return tf.cast(vocab.encode_tf(text), tf.int32)


def _slot(vocab: KosmosVocabulary) -> tf.Tensor:
  """An image slot at the task level: `<image> </image>`."""
  return tf.constant([vocab.image_id, vocab.end_image_id], tf.int32)


def _sequence(parts, weights, images) -> dict[str, tf.Tensor]:
  """Concatenates token parts with a loss weight per part."""
  targets = tf.concat(parts, axis=0)
  loss = tf.concat([tf.fill(tf.shape(p), w) for p, w in zip(parts, weights)], axis=0)
  return {"targets": targets, "loss_weights": tf.cast(loss, tf.int32),
          "images": _relaxed_images(images)}


def _passthrough(ex, consumed) -> dict[str, tf.Tensor]:
  """Other features (e.g. strings for evaluation) ride along; mixtures and the converter drop
  everything but the task features."""
  return {k: v for k, v in ex.items() if k not in consumed}


def text_to_sequence(ds: tf.data.Dataset, output_features: Mapping[str, seqio.Feature],
                     text_key: str = "text") -> tf.data.Dataset:
  """A text document: `text </s>`, loss on every token."""
  vocab = _vocabulary(output_features)
  eos = tf.constant([vocab.eos_id], tf.int32)

  def convert(ex):
    out = dict(ex)
    out.update(_sequence([_encode(vocab, ex[text_key]), eos], [1, 1], no_images()))
    return out
  return ds.map(no_autograph(convert), num_parallel_calls=tf.data.AUTOTUNE)


def image_text_to_sequence(ds: tf.data.Dataset, output_features: Mapping[str, seqio.Feature],
                           image_key: str = "image", text_key: str = "text",
                           prompt_key: Optional[str] = None,
                           prompt_loss: bool = True) -> tf.data.Dataset:
  """An image-caption pair (or VQA): `<image> </image> [prompt] text </s>`.

  The image must already be uint8 [H, W, 3] (see `decode_images`). Loss is on the text and
  `</s>`, and on the prompt when `prompt_loss` (e.g. VQA `Question: ... Answer:` with the answer
  in `text_key`).
  """
  vocab = _vocabulary(output_features)
  _check_image_feature(ds, image_key, 3, "image_text_to_sequence")
  eos = tf.constant([vocab.eos_id], tf.int32)

  def convert(ex):
    out = _passthrough(ex, {image_key})
    parts, weights = [_slot(vocab)], [0]
    if prompt_key is not None:
      parts.append(_encode(vocab, ex[prompt_key]))
      weights.append(int(prompt_loss))
    parts += [_encode(vocab, ex[text_key]), eos]
    weights += [1, 1]
    out.update(_sequence(parts, weights, ex[image_key][tf.newaxis]))
    return out
  return ds.map(no_autograph(convert), num_parallel_calls=tf.data.AUTOTUNE)


def instruction_to_sequence(ds: tf.data.Dataset, output_features: Mapping[str, seqio.Feature],
                            instruction_key: str = "instruction", input_key: str = "input",
                            output_key: str = "output") -> tf.data.Dataset:
  """Language-only instruction data: `instruction input output </s>`, loss on output and `</s>`."""
  vocab = _vocabulary(output_features)
  eos = tf.constant([vocab.eos_id], tf.int32)

  def convert(ex):
    out = dict(ex)
    parts = [_encode(vocab, ex[instruction_key]), _encode(vocab, ex[input_key]),
             _encode(vocab, ex[output_key]), eos]
    out.update(_sequence(parts, [0, 0, 1, 1], no_images()))
    return out
  return ds.map(no_autograph(convert), num_parallel_calls=tf.data.AUTOTUNE)


def drop_single_image_documents(ds: tf.data.Dataset, images_key: str = "images",
                                texts_key: str = "texts", rate: float = 0.5,
                                seed: int = 0) -> tf.data.Dataset:
  """Drops a `rate` fraction of one-image documents (Kosmos-1 §3.1), counted as dropped.

  The choice hashes the document text with `seed`, so it does not depend on order or sharding.
  """
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"drop_single_image_documents: rate={rate} must be in [0, 1]")

  def keep(ex):
    num_images = tf.shape(ex[images_key])[0]
    text = tf.strings.reduce_join(ex[texts_key], separator="\n")
    bucket = tf.strings.to_hash_bucket_fast(text, 2**31 - 1)
    draw = tf.random.stateless_uniform([], seed=tf.stack([tf.cast(seed, tf.int64), bucket]))
    return tf.logical_or(tf.not_equal(num_images, 1), draw >= rate)
  return filter_and_count(ds, keep, "interleaved_single_image_dropped")


def interleaved_to_sequence(ds: tf.data.Dataset, output_features: Mapping[str, seqio.Feature],
                            texts_key: str = "texts", images_key: str = "images",
                            image_index_key: str = "image_text_index",
                            max_images: int = 5) -> tf.data.Dataset:
  """An interleaved document: text pieces with an image slot before each matched piece.

  Inputs: `texts` string [m]; `images` uint8 [n, H, W, 3]; `image_text_index` int [n], sorted,
  in [0, m]: image j goes right before texts[index[j]] (m: after the last text), as in MMC4's
  `matched_text_index`. At most `max_images` (5 in the paper) are kept, the first ones.
  Loss on all text and `</s>`. Documents without images or with a bad index are dropped and
  counted ("interleaved_no_images", "interleaved_bad_image_index").
  """
  vocab = _vocabulary(output_features)
  _check_image_feature(ds, images_key, 4, "interleaved_to_sequence")
  if max_images < 1:
    raise ValueError(f"interleaved_to_sequence: max_images={max_images} must be >= 1")

  def index_ok(ex):
    index = tf.cast(ex[image_index_key], tf.int32)
    num_texts = tf.size(ex[texts_key])
    sorted_ = tf.reduce_all(index[1:] >= index[:-1])
    in_range = tf.reduce_all((index >= 0) & (index <= num_texts))
    same_count = tf.equal(tf.size(index), tf.shape(ex[images_key])[0])
    return sorted_ & in_range & same_count

  ds = filter_and_count(ds, lambda ex: tf.shape(ex[images_key])[0] > 0, "interleaved_no_images")
  ds = filter_and_count(ds, index_ok, "interleaved_bad_image_index")

  def convert(ex):
    out = _passthrough(ex, {images_key, image_index_key})
    images = ex[images_key][:max_images]
    index = tf.cast(ex[image_index_key], tf.int32)[:max_images]
    num_texts = tf.size(ex[texts_key])
    slots_before = tf.math.bincount(index, minlength=num_texts + 1, maxlength=num_texts + 1,
                                    dtype=tf.int32)                     # [m + 1]
    slot_rows = tf.RaggedTensor.from_row_lengths(
        tf.tile(_slot(vocab), [tf.reduce_sum(slots_before)]),
        tf.cast(2 * slots_before, tf.int64), validate=False)           # [m + 1, 2 * slots]
    text_rows = vocab.encode_tf(ex[texts_key])                         # [m, tokens]
    text_rows = tf.concat([tf.cast(text_rows, tf.int32),
                           tf.RaggedTensor.from_row_lengths(tf.zeros([0], tf.int32),
                                                            tf.zeros([1], tf.int64),
                                                            validate=False)], axis=0)
    tokens = tf.concat([slot_rows, text_rows], axis=1).flat_values
    tokens = tf.concat([tokens, [vocab.eos_id]], axis=0)
    is_slot = (tokens == vocab.image_id) | (tokens == vocab.end_image_id)
    out.update({"targets": tokens, "loss_weights": tf.cast(~is_slot, tf.int32),
                "images": _relaxed_images(images)})
    return out
  return ds.map(no_autograph(convert), num_parallel_calls=tf.data.AUTOTUNE)
