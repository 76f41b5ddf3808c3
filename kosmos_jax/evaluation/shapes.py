"""Evaluation tasks of the built-in shapes world, registered as eval tasks on import:

  shapes_eval_captions   `<image> an image of` -> caption; CIDEr-D, BLEU-4, exact match
  shapes_eval_vqa        `<image> Question: ... Answer:` -> answer; VQA accuracy, exact match
  shapes_eval_classify   single-object images, zero-shot classification by likelihood over the
                         24 "a <colour> <shape>" phrases after `<image> an image of`
  shapes_eval_colour_kshot  an in-context task in a format never trained on
                         (`<image> colour: red`), for k-shot prompting

Splits: validation, test (random images of the training combos) and heldout (each image holds
a colour-shape pair never seen in training). `evaluate()` runs the demo's report.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import numpy as np
import seqio
import tensorflow as tf

from kosmos_jax.data import prompts as prompts_lib
from kosmos_jax.evaluation import tasks as eval_tasks
from kosmos_jax.evaluation import metrics as metrics_lib
from kosmos_jax.evaluation import evaluator
from kosmos_jax.inference import runner as runner_lib
from kosmos_jax.data import synthetic

WORLD = synthetic.WorldConfig()
IMAGE_SIZE = 32
PHRASES = [f"a {c} {s}" for c in synthetic.COLOURS for s in synthetic.SHAPES]
TASKS = {"captions": "shapes_eval_captions", "vqa": "shapes_eval_vqa",
         "classify": "shapes_eval_classify", "kshot": "shapes_eval_colour_kshot"}


def _records(kind: str, split: str) -> dict[str, Any]:
  data = synthetic.split_data(WORLD, split)
  if kind in ("captions", "vqa"):
    rec = getattr(data, kind)
    ids = np.asarray(rec["image_id"])
    return {"id": [f"{split}-{kind}-{i}" for i in range(len(ids))],
            "prompt": [f"{prompts_lib.IMAGE_MARKER} {p}" for p in rec["prompt"]],
            "images": data.images[ids][:, None],
            # VQA accuracy scores against 10 annotator answers: here 10 copies of the answer
            # as the training data writes it ("two"), i.e. agreeing annotators, whom the
            # official evaluation compares verbatim with the prediction.
            "references": [[a] * 10 if kind == "vqa" else [a] for a in rec["answer"]],
            "label": [-1] * len(ids)}
  single = [i for i in range(len(data.scenes)) if len(data.scenes.objects(i)) == 1]
  objects = [data.scenes.objects(i)[0] for i in single]          # (cell, colour, shape)
  if kind == "classify":
    labels = [colour * len(synthetic.SHAPES) + shape for _, colour, shape in objects]
    return {"id": [f"{split}-classify-{i}" for i in single],
            "prompt": [f"{prompts_lib.IMAGE_MARKER} {synthetic.CAPTION_PROMPT}"] * len(single),
            "images": data.images[single][:, None],
            "references": [[PHRASES[l]] for l in labels], "label": labels,
            "candidates": [PHRASES] * len(single)}
  return {"id": [f"{split}-kshot-{i}" for i in single],
          "prompt": [f"{prompts_lib.IMAGE_MARKER} colour:"] * len(single),
          "images": data.images[single][:, None],
          "references": [[synthetic.COLOURS[colour]] for _, colour, _ in objects],
          "label": [-1] * len(single)}


def _dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None, *,
                kind: str) -> tf.data.Dataset:
  del shuffle_files, seed
  rec = _records(kind, split)
  tensors = {"id": rec["id"], "prompt": rec["prompt"], "images": rec["images"],
             "references": tf.constant(rec["references"]), "label": rec["label"]}
  if "candidates" in rec:
    tensors["candidates"] = tf.constant(rec["candidates"])
  return tf.data.Dataset.from_tensor_slices(tensors)


def register() -> dict[str, str]:
  """Registers the four shapes eval tasks (idempotent); returns kind -> task name."""
  source = lambda kind: seqio.FunctionDataSource(
      functools.partial(_dataset_fn, kind=kind), splits=("train", "validation", "test", "heldout"))
  eval_tasks.add_eval_task(
      TASKS["captions"], source("captions"),
      eval_tasks.EvalSpec(mode="generate", strategy="greedy", max_new_tokens=24),
      [metrics_lib.coco_caption_metrics, metrics_lib.first_reference_accuracy], image_size=IMAGE_SIZE)
  eval_tasks.add_eval_task(
      TASKS["vqa"], source("vqa"),
      eval_tasks.EvalSpec(mode="generate", strategy="greedy", max_new_tokens=6),
      [metrics_lib.vqa_accuracy], image_size=IMAGE_SIZE)
  eval_tasks.add_eval_task(
      TASKS["classify"], source("classify"),
      eval_tasks.EvalSpec(mode="score", score_normalization="sum"),
      [metrics_lib.rank_accuracy], image_size=IMAGE_SIZE)
  eval_tasks.add_eval_task(
      TASKS["kshot"], source("kshot"),
      eval_tasks.EvalSpec(mode="generate", max_new_tokens=3, postprocess="first_sentence",
                          demo_split="validation"),
      [metrics_lib.first_reference_accuracy], image_size=IMAGE_SIZE)
  return dict(TASKS)


register()


def format_results(results: dict[str, evaluator.TaskResult], samples: int = 6) -> str:
  """The demo's report: metrics per task and split, then sample captions next to the truth."""
  lines = ["held-out generation metrics (greedy decoding):"]
  for key, result in results.items():
    shown = []
    for name, value in sorted(result.metrics.items()):
      if name == "cider":
        shown.append(f"CIDEr-D {value / 100:.2f} (x100: {value:.0f})")
      elif name in ("vqa_accuracy", "accuracy", "bleu_4"):
        shown.append(f"{name} {value:.1f}")
    label = f"{result.task} [{result.split}{', %d-shot' % result.k_shot if result.k_shot else ''}]"
    lines.append(f"  {label:<46} {', '.join(shown)}   ({len(result.examples)} examples, "
                 f"{result.seconds:.0f} s)")
  for key, result in results.items():
    if result.task == TASKS["captions"]:
      lines.append(f"\nsample captions ({result.split}):")
      for e in result.examples[:samples]:
        lines.append(f"  model: {e.prediction}\n  truth: {e.references[0]}")
  return "\n".join(lines)


def evaluate(model, params, *, num_examples: int = 300, batch_size: int = 32,
             k_shot: int = 0) -> dict[str, Any]:
  """Runs the shapes evals on test and heldout; returns metrics, results and a report.

  k_shot > 0 adds the in-context colour task with that many demonstrations (a model this small
  shows no in-context learning, so the demo leaves it out).
  """
  runner = runner_lib.Runner(model, params, synthetic.ShapesVocabulary(),
                                batch_size=batch_size)
  results = {}
  for split in ("test", "heldout"):
    for kind in ("captions", "vqa", "classify"):
      results[f"{kind}:{split}"] = evaluator.run_task(runner, TASKS[kind], split=split,
                                                        num_examples=num_examples)
  if k_shot:
    results["kshot:test"] = evaluator.run_task(runner, TASKS["kshot"], split="test",
                                                 num_examples=num_examples, k_shot=k_shot)
  metrics = {key: r.metrics for key, r in results.items()}
  return {"metrics": metrics, "results": results, "report": format_results(results)}
