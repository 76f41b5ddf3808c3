"""Runs eval tasks (`kosmos_jax.eval_tasks`) on a model: builds prompts in the training layout
(k-shot demonstrations and two-stage rationales included), decodes or scores candidates in
batches, and applies the task's metric functions.

  results = evaluator.evaluate(model, params, vocab, ["shapes_captions_test"], num_examples=300)
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Iterable, Optional, Sequence

import jax
import numpy as np
import seqio

from kosmos_jax import decoding
from kosmos_jax import eval_tasks
from kosmos_jax import scoring
from kosmos_jax.data import prompts as prompts_lib
from kosmos_jax.data.vocab import KosmosVocabulary


@dataclasses.dataclass
class Example:
  id: str
  prompt: str
  images: np.ndarray           # [n, S, S, 3] uint8
  references: list[str]
  candidates: list[str]
  label: int
  prediction: str = ""
  scores: Optional[list[float]] = None


@dataclasses.dataclass
class TaskResult:
  task: str
  split: str
  metrics: dict[str, float]
  examples: list[Example]
  seconds: float
  k_shot: int = 0


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def load_examples(task_name: str, split: str, limit: Optional[int] = None) -> list[Example]:
  """The first `limit` examples of a split, in order, as python objects."""
  task = seqio.get_mixture_or_task(task_name)
  ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1,
                        try_in_mem_cache=False)
  if limit is not None:
    ds = ds.take(limit)
  out = []
  for ex in ds.as_numpy_iterator():
    out.append(Example(id=_text(ex["id"]), prompt=_text(ex["prompt"]), images=ex["images"],
                       references=[_text(r) for r in ex["references"]],
                       candidates=[_text(c) for c in ex["candidates"]], label=int(ex["label"])))
  return out


def split_prompt(prompt: str, images: np.ndarray) -> list[Any]:
  """"<image> Question: ..." + images -> [image, " Question: ..."] segments for encode_prompt."""
  pieces = prompt.split(eval_tasks.IMAGE_MARKER)
  if len(pieces) - 1 != len(images):
    raise ValueError(f"prompt has {len(pieces) - 1} {eval_tasks.IMAGE_MARKER} markers but "
                     f"{len(images)} images: {prompt[:80]!r}")
  segments: list[Any] = []
  for k, piece in enumerate(pieces):
    if k:
      segments.append(images[k - 1])
    if piece.strip():
      segments.append(piece.strip())
  return segments


def with_demonstrations(example: Example, demos: Sequence[Example],
                        spec: eval_tasks.EvalSpec) -> Example:
  """Prepends k demonstrations (prompt + answer) before the query, images included."""
  text = " ".join(d.prompt + spec.answer_prefix + d.references[0] for d in demos)
  images = [d.images for d in demos] + [example.images]
  return dataclasses.replace(example, prompt=(text + " " + example.prompt).strip(),
                             images=np.concatenate(images, axis=0))


def _bucket(length: int, multiple: int = 16) -> int:
  return -(-length // multiple) * multiple


class Runner:
  """Holds a model + params + vocabulary; runs eval tasks in batches."""

  def __init__(self, model, params, vocab: KosmosVocabulary, *, batch_size: int = 16,
               num_image_tokens: Optional[int] = None, image_size: Optional[int] = None):
    self.model, self.params, self.vocab = model, params, vocab
    self.batch_size = batch_size
    config = model.config
    self.num_image_tokens = num_image_tokens or config.num_image_tokens
    self.image_size = image_size or config.vision.image_size

  def _batch(self, examples: Sequence[Example]) -> dict[str, np.ndarray]:
    encoded = [prompts_lib.encode_prompt(self.vocab, split_prompt(e.prompt, e.images),
                                         self.num_image_tokens) for e in examples]
    # Pad rows to a fixed batch size and the length to a bucket: fewer distinct compilations.
    while len(encoded) < self.batch_size:
      encoded.append(encoded[-1])
    batch = prompts_lib.batch_prompts(encoded, self.image_size, pad_id=self.vocab.pad_id)
    length = _bucket(batch["tokens"].shape[1])
    pad = length - batch["tokens"].shape[1]
    for key in ("tokens", "image_token_mask", "segment_ids"):
      fill = self.vocab.pad_id if key == "tokens" else 0
      batch[key] = np.pad(batch[key], ((0, 0), (pad, 0)), constant_values=fill)
    return batch

  def generate(self, examples: Sequence[Example], config: decoding.DecodeConfig,
               constraint: Optional[decoding.PrefixTrie] = None, seed: int = 0) -> list[str]:
    """Generated text (up to eos) for each example (`seed` drives strategy "sample")."""
    out = []
    rng = jax.random.key(seed) if config.strategy == "sample" else None
    for start in range(0, len(examples), self.batch_size):
      chunk = examples[start:start + self.batch_size]
      batch = self._batch(chunk)
      result = decoding.decode(self.model, self.params, batch["tokens"], config,
                               images=batch["images"], image_token_mask=batch["image_token_mask"],
                               segment_ids=batch["segment_ids"], constraint=constraint,
                               rng=None if rng is None else jax.random.fold_in(rng, start))
      sequences = np.asarray(jax.device_get(result.sequences))
      prompt_len = batch["tokens"].shape[1]
      for row in range(len(chunk)):
        new = sequences[row, prompt_len:].tolist()
        if config.eos_id is not None and config.eos_id in new:
          new = new[:new.index(config.eos_id)]
        new = [t for t in new if t != config.pad_id]
        out.append(self.vocab.decode(new))
    return out

  def score(self, examples: Sequence[Example], normalization: str) -> list[list[float]]:
    """Per example, the log-likelihood (mean or sum) of each of its candidates."""
    out = []
    for start in range(0, len(examples), self.batch_size):
      chunk = list(examples[start:start + self.batch_size])
      batch = self._batch(chunk)
      cands = [[list(self.vocab.encode(c)) for c in e.candidates] for e in chunk]
      num = max(len(c) for c in cands)
      while len(cands) < self.batch_size:
        cands.append(cands[-1])
      flat = [c for row in cands for c in row + [row[-1]] * (num - len(row))]
      length = _bucket(max(len(c) for c in flat), 4)
      padded, mask = scoring.pad_sequences(flat, self.vocab.pad_id, length)
      shape = (self.batch_size, num, length)
      scores = scoring.score_continuations(
          self.model, self.params, batch["tokens"], np.asarray(padded).reshape(shape),
          continuation_mask=np.asarray(mask).reshape(shape), images=batch["images"],
          image_token_mask=batch["image_token_mask"], segment_ids=batch["segment_ids"])
      values = np.asarray(jax.device_get(scores.mean if normalization == "mean" else scores.total))
      for row, example in enumerate(chunk):
        out.append(values[row, :len(example.candidates)].tolist())
    return out

  def run_task(self, task_name: str, *, split: str = "test", num_examples: Optional[int] = None,
               k_shot: int = 0, seed: int = 0) -> TaskResult:
    start = time.time()
    spec = eval_tasks.get_spec(task_name)
    examples = load_examples(task_name, split, num_examples)
    if not examples:
      raise ValueError(f"eval task {task_name!r} has no examples in split {split!r}")
    queries = examples
    if k_shot:
      pool = load_examples(task_name, spec.demo_split, max(200, 4 * k_shot))
      rng = np.random.RandomState(seed)
      queries = []
      for e in examples:
        choices = [d for d in pool if d.id != e.id]
        picks = rng.choice(len(choices), k_shot, replace=False)
        queries.append(with_demonstrations(e, [choices[i] for i in picks], spec))
    if spec.rationale_prompt:
      queries = self._with_rationales(queries, spec)
    metric_fns = eval_tasks.task_metric_fns(task_name)
    metrics: dict[str, float] = {}
    if spec.mode == "generate":
      config = decoding.DecodeConfig(
          strategy=spec.strategy, beam_size=spec.beam_size, length_penalty=spec.length_penalty,
          max_new_tokens=spec.max_new_tokens, no_repeat_ngram_size=spec.no_repeat_ngram_size,
          eos_id=self.vocab.eos_id, pad_id=self.vocab.pad_id)
      constraint = None
      if spec.constrained:
        names = sorted({c for e in examples for c in e.candidates})
        constraint = decoding.PrefixTrie.from_candidates(
            [list(self.vocab.encode(n)) for n in names], self.vocab.eos_id)
      post = eval_tasks.POSTPROCESSORS[spec.postprocess]
      predictions = [post(p) for p in self.generate(queries, config, constraint)]
      for e, p in zip(examples, predictions):
        e.prediction = p
      for fn in metric_fns:
        metrics.update(fn([e.references for e in examples], predictions))
    else:
      scores = self.score(queries, spec.score_normalization)
      for e, s in zip(examples, scores):
        e.scores = s
        e.prediction = e.candidates[int(np.argmax(s))]
      for fn in metric_fns:
        metrics.update(fn([e.label for e in examples], scores))
    for e, q in zip(examples, queries):
      e.prompt, e.images = q.prompt, q.images    # what the model saw (for reports)
    return TaskResult(task_name, split, metrics, examples, time.time() - start, k_shot)

  def _with_rationales(self, queries: Sequence[Example], spec) -> list[Example]:
    """Stage 1 of two-stage prompting: generate a rationale from the images alone, then place
    it after the images and before the question (multimodal chain of thought)."""
    stage1 = [dataclasses.replace(q, prompt=eval_tasks.IMAGE_MARKER * len(q.images) + " "
                                  + spec.rationale_prompt) for q in queries]
    config = decoding.DecodeConfig(strategy="greedy", max_new_tokens=spec.rationale_max_tokens,
                                   eos_id=self.vocab.eos_id, pad_id=self.vocab.pad_id,
                                   no_repeat_ngram_size=3)
    rationales = self.generate(stage1, config)
    out = []
    for q, rationale in zip(queries, rationales):
      text = q.prompt.replace(eval_tasks.IMAGE_MARKER, "").strip()
      prompt = eval_tasks.IMAGE_MARKER * len(q.images) + " " + rationale.strip() + " " + text
      out.append(dataclasses.replace(q, prompt=prompt))
    return out


def evaluate(runner: Runner, tasks: Iterable[str | tuple[str, str]], *,
             num_examples: Optional[int] = None, k_shot: int = 0, seed: int = 0
             ) -> dict[str, TaskResult]:
  """Runs each task (name, or (name, split); default split "test")."""
  results = {}
  for item in tasks:
    name, split = (item, "test") if isinstance(item, str) else item
    key = name if split == "test" else f"{name}:{split}"
    results[key] = runner.run_task(name, split=split, num_examples=num_examples, k_shot=k_shot,
                                   seed=seed)
  return results
