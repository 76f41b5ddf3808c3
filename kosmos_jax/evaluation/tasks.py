"""Evaluation tasks: SeqIO tasks whose examples are prompts with images plus references, and
whose `metric_fns` score generated text (or candidate likelihoods).

Every eval example, after the task's preprocessors, has these features:
  id          string
  prompt      string with one literal `<image>` marker (`data.prompts.IMAGE_MARKER`) per image, in order, e.g.
              "<image> Question: what colour is the circle? Answer:"
  images      uint8 [num_images, S, S, 3] at the task's image size S (num_images may be 0)
  references  string [num_references] (captions, the 10 VQA answers, the class name, ...)
  candidates  string [num_candidates] (scoring tasks: the continuations to rank; else empty)
  label       int32 (scoring tasks: index of the right candidate, or a binary label; else -1)

How each task is run lives in `EvalSpec` (registered next to the SeqIO task): "generate" decodes
with a `DecodeConfig` and compares the text with the references; "score" ranks the candidates by
log-likelihood. Optional k-shot prompting takes demonstrations from another split of the same
task; optional two-stage prompting (multimodal chain of thought) first generates a rationale.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
from typing import Callable, Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from kosmos_jax.data import images as images_lib
from kosmos_jax.data import preprocessors as pp

# Split of an eval task named without one (inference evals during training, `eval` EVAL_TASKS):
# validation, so that model selection never looks at test.
DEFAULT_SPLIT = "validation"
MODES = ("generate", "score")
EVAL_FEATURES = ("id", "prompt", "images", "references", "candidates", "label")


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  """How to run one eval task.

  mode: "generate" or "score".
  strategy / beam_size / length_penalty / max_new_tokens / no_repeat_ngram_size: decoding
    ("generate"); the paper uses beam 5 for captions, greedy for VQA, beam 2 for ImageNet.
  constrained: decode only the task's candidates (prefix trie), e.g. ImageNet class names.
  score_normalization: "mean" or "sum" log-likelihood per candidate ("score").
  answer_prefix: text between a demonstration's prompt and its answer in k-shot prompts.
  demo_split: split demonstrations come from (k-shot).
  rationale_prompt: two-stage prompting: first generate `rationale_max_tokens` tokens after
    `<image> {rationale_prompt}`, then put the rationale before the task prompt's text.
  postprocess: name in POSTPROCESSORS applied to generated text before the metrics.
  """
  mode: str = "generate"
  strategy: str = "greedy"
  beam_size: int = 1
  length_penalty: float = 1.0
  max_new_tokens: int = 20
  no_repeat_ngram_size: int = 0
  constrained: bool = False
  score_normalization: str = "mean"
  answer_prefix: str = " "
  demo_split: str = "train"
  rationale_prompt: Optional[str] = None
  rationale_max_tokens: int = 48
  postprocess: str = "strip"

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"EvalSpec.mode={self.mode!r}; choose one of {MODES}")
    if self.score_normalization not in ("mean", "sum"):
      raise ValueError(f"EvalSpec.score_normalization={self.score_normalization!r}: mean or sum")
    if self.postprocess not in POSTPROCESSORS:
      raise ValueError(f"EvalSpec.postprocess={self.postprocess!r}; one of {sorted(POSTPROCESSORS)}")


def _first_line(text: str) -> str:
  return text.strip().split("\n")[0].strip()


POSTPROCESSORS: Mapping[str, Callable[[str], str]] = {
    "strip": str.strip,
    "first_line": _first_line,
    "first_sentence": lambda t: t.strip().split(".")[0].strip(),
    "lower": lambda t: t.strip().lower(),
}

_SPECS: dict[str, EvalSpec] = {}


def get_spec(task_name: str) -> EvalSpec:
  if task_name not in _SPECS:
    close = difflib.get_close_matches(str(task_name), list(_SPECS), n=5, cutoff=0.4)
    hint = f"closest: {', '.join(close)}" if close else f"registered: {sorted(_SPECS)}"
    raise ValueError(f"{task_name!r} is not a registered eval task ({hint}); import the module "
                     "that registers yours (eval's `imports`) or include its gin file")
  return _SPECS[task_name]


def registered() -> list[str]:
  return sorted(_SPECS)


def task_and_split(item: str | Sequence[str]) -> tuple[str, str]:
  """An eval-task entry as gin writes it, a name or (name, split) -> (name, split)."""
  if isinstance(item, str):
    return item, DEFAULT_SPLIT
  name, split = item
  return name, split


# ----------------------------------------------------------------------------- preprocessing

def standardize(ds: tf.data.Dataset, image_size: int) -> tf.data.Dataset:
  """Brings source records to the eval features: decodes `image_bytes` (string [n]) or takes
  `images` (uint8 [n, h, w, 3]), resizes + centre-crops to `image_size`, fills defaults."""
  def convert(ex):
    if "image_bytes" in ex:
      images = tf.map_fn(lambda data: images_lib.decode_and_resize(data, image_size),
                         ex["image_bytes"],
                         fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.uint8))
    elif "images" in ex:
      images = images_lib.resize_images(tf.convert_to_tensor(ex["images"], tf.uint8), image_size)
    else:
      images = tf.zeros((0, image_size, image_size, 3), tf.uint8)
    references = tf.reshape(tf.convert_to_tensor(ex.get("references", tf.constant([], tf.string))), [-1])
    candidates = tf.reshape(tf.convert_to_tensor(ex.get("candidates", tf.constant([], tf.string))), [-1])
    return {"id": tf.strings.as_string(ex["id"]) if ex["id"].dtype != tf.string else ex["id"],
            "prompt": ex["prompt"], "images": images, "references": references,
            "candidates": candidates,
            "label": tf.cast(ex.get("label", tf.constant(-1)), tf.int32)}
  return ds.map(pp.no_autograph(convert), num_parallel_calls=tf.data.AUTOTUNE)


def add_eval_task(name: str, source: seqio.DataSource, spec: EvalSpec,
                  metric_fns: Sequence[Callable], *, image_size: int,
                  preprocessors: Sequence[Callable] = ()) -> str:
  """Registers a SeqIO eval task (re-registering replaces it) and its EvalSpec; returns name.

  `preprocessors` run before `standardize` (e.g. to build prompts from raw fields).
  metric_fns: seqio-style `(targets, predictions) -> dict` for "generate" (targets are the
  reference lists) or `(targets, scores) -> dict` for "score" (targets are the labels, scores
  the per-candidate log-likelihoods).
  """
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=source,
      preprocessors=list(preprocessors) + [functools.partial(standardize, image_size=image_size)],
      output_features={}, metric_fns=list(metric_fns))
  _SPECS[name] = spec
  return name


def task_metric_fns(task_name: str) -> list[Callable]:
  task = seqio.get_mixture_or_task(task_name)
  spec = get_spec(task_name)
  return list(task.predict_metric_fns if spec.mode == "generate" else task.score_metric_fns)
