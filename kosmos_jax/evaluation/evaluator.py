"""Runs eval tasks (`evaluation.tasks`) on a model through the inference `Runner`: builds the
prompts (k-shot demonstrations and two-stage rationales included), decodes or scores candidates
in batches, and applies the task's metric functions.

  runner = runner_lib.Runner(model, params, vocab)
  results = evaluator.evaluate(runner, [("shapes_eval_vqa", "test")], num_examples=300)
"""
from __future__ import annotations

import dataclasses
import time
from typing import Iterable, Optional, Sequence

import numpy as np

from kosmos_jax.data import pipeline
from kosmos_jax.data import prompts as prompts_lib
from kosmos_jax.evaluation import metrics as metrics_lib
from kosmos_jax.evaluation import tasks as eval_tasks
from kosmos_jax.inference import decoding
from kosmos_jax.inference import runner as runner_lib


@dataclasses.dataclass
class EvalExample(runner_lib.Example):
  """An eval task's example: the request plus what it is scored against and what it got."""
  references: list[str] = dataclasses.field(default_factory=list)
  label: int = -1
  prediction: str = ""
  scores: Optional[list[float]] = None
  # This example's score under each of the task's metrics (`metrics.per_example_scores`).
  example_scores: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class TaskResult:
  task: str
  split: str
  metrics: dict[str, float]
  examples: list[EvalExample]
  seconds: float
  k_shot: int = 0


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def load_examples(task_name: str, split: str, limit: Optional[int] = None) -> list[EvalExample]:
  """The first `limit` examples of a split, in order, as python objects."""
  task = pipeline.get_mixture_or_task(task_name)
  ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1,
                        try_in_mem_cache=False)
  if limit is not None:
    ds = ds.take(limit)
  return [EvalExample(id=_text(ex["id"]), prompt=_text(ex["prompt"]), images=ex["images"],
                      candidates=[_text(c) for c in ex["candidates"]],
                      references=[_text(r) for r in ex["references"]], label=int(ex["label"]))
          for ex in ds.as_numpy_iterator()]


def with_demonstrations(example: EvalExample, demos: Sequence[EvalExample],
                        spec: eval_tasks.EvalSpec) -> EvalExample:
  """Prepends k demonstrations (prompt + answer) before the query, images included."""
  text = " ".join(d.prompt + spec.answer_prefix + d.references[0] for d in demos)
  images = [d.images for d in demos] + [example.images]
  return dataclasses.replace(example, prompt=(text + " " + example.prompt).strip(),
                             images=np.concatenate(images, axis=0))


def with_rationales(runner: runner_lib.Runner, queries: Sequence[EvalExample],
                    spec: eval_tasks.EvalSpec) -> list[EvalExample]:
  """Stage 1 of two-stage prompting: generate a rationale from the images alone, then place
  it after the images and before the question (multimodal chain of thought)."""
  marker = prompts_lib.IMAGE_MARKER
  stage1 = [dataclasses.replace(q, prompt=marker * len(q.images) + " " + spec.rationale_prompt)
            for q in queries]
  config = decoding.DecodeConfig(strategy="greedy", max_new_tokens=spec.rationale_max_tokens,
                                 eos_id=runner.vocab.eos_id, pad_id=runner.vocab.pad_id,
                                 no_repeat_ngram_size=3)
  rationales = runner.generate(stage1, config)
  out = []
  for q, rationale in zip(queries, rationales):
    text = q.prompt.replace(marker, "").strip()
    prompt = marker * len(q.images) + " " + rationale.strip() + " " + text
    out.append(dataclasses.replace(q, prompt=prompt))
  return out


def _k_shot_queries(examples: Sequence[EvalExample], task_name: str, spec: eval_tasks.EvalSpec,
                    k_shot: int, seed: int) -> list[EvalExample]:
  pool = load_examples(task_name, spec.demo_split, max(200, 4 * k_shot))
  rng = np.random.RandomState(seed)
  queries = []
  for e in examples:
    choices = [d for d in pool if d.id != e.id]
    picks = rng.choice(len(choices), k_shot, replace=False)
    queries.append(with_demonstrations(e, [choices[i] for i in picks], spec))
  return queries


def _generate(runner: runner_lib.Runner, examples: Sequence[EvalExample],
              queries: Sequence[EvalExample], spec: eval_tasks.EvalSpec) -> list[str]:
  config = decoding.DecodeConfig(
      strategy=spec.strategy, beam_size=spec.beam_size, length_penalty=spec.length_penalty,
      max_new_tokens=spec.max_new_tokens, no_repeat_ngram_size=spec.no_repeat_ngram_size,
      eos_id=runner.vocab.eos_id, pad_id=runner.vocab.pad_id)
  constraint = None
  if spec.constrained:
    names = sorted({c for e in examples for c in e.candidates})
    constraint = decoding.PrefixTrie.from_candidates(
        [list(runner.vocab.encode(n)) for n in names], runner.vocab.eos_id)
  post = eval_tasks.POSTPROCESSORS[spec.postprocess]
  return [post(p) for p in runner.generate(queries, config, constraint)]


def run_task(runner: runner_lib.Runner, task_name: str, *, split: str = eval_tasks.DEFAULT_SPLIT,
             num_examples: Optional[int] = None, k_shot: int = 0, seed: int = 0) -> TaskResult:
  """One eval task on one split: its examples, predictions or candidate scores, and metrics."""
  start = time.time()
  spec = eval_tasks.get_spec(task_name)
  examples = load_examples(task_name, split, num_examples)
  if not examples:
    raise ValueError(f"eval task {task_name!r} has no examples in split {split!r}")
  queries = _k_shot_queries(examples, task_name, spec, k_shot, seed) if k_shot else examples
  if spec.rationale_prompt:
    queries = with_rationales(runner, queries, spec)
  metrics: dict[str, float] = {}
  if spec.mode == "generate":
    predictions = _generate(runner, examples, queries, spec)
    for e, p in zip(examples, predictions):
      e.prediction = p
    targets, outputs = [e.references for e in examples], predictions
  else:
    scores = runner.score(queries, spec.score_normalization)
    for e, s in zip(examples, scores):
      e.scores = s
      e.prediction = e.candidates[int(np.argmax(s))]
    targets, outputs = [e.label for e in examples], scores
  metric_fns = eval_tasks.task_metric_fns(task_name)
  for fn in metric_fns:
    metrics.update(fn(targets, outputs))
  for e, row in zip(examples, metrics_lib.per_example_scores(metric_fns, targets, outputs)):
    e.example_scores = row
  for e, q in zip(examples, queries):
    e.prompt, e.images = q.prompt, q.images    # what the model saw (for reports)
  return TaskResult(task_name, split, metrics, examples, time.time() - start, k_shot)


def evaluate(runner: runner_lib.Runner, tasks: Iterable[str | tuple[str, str]], *,
             num_examples: Optional[int] = None, k_shot: int = 0, seed: int = 0
             ) -> dict[str, TaskResult]:
  """Runs each task (a name, for `tasks.DEFAULT_SPLIT`, or (name, split)); keys "name:split"."""
  results = {}
  for item in tasks:
    name, split = eval_tasks.task_and_split(item)
    results[f"{name}:{split}"] = run_task(runner, name, split=split, num_examples=num_examples,
                                          k_shot=k_shot, seed=seed)
  return results
