r"""Evaluation entry point, T5X-style:

  python -m kosmos_jax.eval --gin_file=runs/eval.gin --gin.CHECKPOINT_DIR="'/runs/shapes'" \
      --gin.EVAL_OUTPUT_DIR="'/runs/shapes/eval'" \
      --gin.EVAL_TASKS="[('shapes_eval_vqa', 'test'), ('shapes_eval_captions', 'heldout')]"

Evaluates a checkpoint (training run, weights-only checkpoint or Hugging Face directory) on eval
tasks (`kosmos_jax.evaluation.tasks`); with `watch=True` on a training run it evaluates every new
checkpoint as it appears until training has finished. Writes metrics to TensorBoard,
`EVAL_OUTPUT_DIR/metrics.jsonl` (one object per step and task) and an HTML report per step.
"""
from __future__ import annotations

import importlib
import json
import os
import time
from typing import Any, Optional, Sequence

from absl import flags
from absl import logging
from clu import metric_writers
import jax

from kosmos_jax.evaluation import evaluator
from kosmos_jax import gin_utils
from kosmos_jax import paths
from kosmos_jax.checkpointing import checkpointer
from kosmos_jax.checkpointing import run_dir as run_dir_lib
from kosmos_jax.inference import model_loading
from kosmos_jax.inference import runner as runner_lib
from kosmos_jax.evaluation import report_html
from kosmos_jax.data.vocab import KosmosVocabulary


def _checkpoint_steps(run_dir: str) -> list[int]:
  if not run_dir_lib.is_training_run(run_dir):
    return []
  checkpoints = checkpointer.Checkpointer(run_dir, read_only=True)
  steps = sorted(checkpoints.all_steps())
  checkpoints.close()
  return steps


def evaluate_once(checkpoint: str, tasks: Sequence[Any], output_dir: str, *, step: int,
                  num_examples: Optional[int], k_shot: int, batch_size: int,
                  vocab_file: Optional[str], writer) -> dict[str, dict[str, float]]:
  vocab = KosmosVocabulary(vocab_file) if vocab_file else None
  model, params, _, vocab, what = model_loading.load_for_inference(checkpoint, vocab)
  logging.info("evaluating %s (step %d)", what, step)
  runner = runner_lib.Runner(model, params, vocab, batch_size=batch_size)
  results = evaluator.evaluate(runner, tasks, num_examples=num_examples, k_shot=k_shot)
  metrics = {key: r.metrics for key, r in results.items()}
  writer.write_scalars(step, {f"eval/{key}/{k}": v for key, m in metrics.items()
                              for k, v in m.items()})
  writer.flush()
  if jax.process_index() > 0:   # every process evaluates on its own devices; one writes
    return metrics
  with open(os.path.join(output_dir, run_dir_lib.METRICS), "a") as f:
    for key, m in metrics.items():
      f.write(json.dumps({"step": step, "task": key, **m}) + "\n")
  report = report_html.write(os.path.join(output_dir, f"report_{step}.html"),
                             f"{what} — step {step}", results)
  for key, m in metrics.items():
    print(f"step {step} {key}: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(m.items())))
  print(f"report: {report}")
  return metrics


def evaluate(*, checkpoint: str, tasks: Sequence[Any], output_dir: str,
             num_examples: Optional[int] = None, k_shot: int = 0, batch_size: int = 16,
             watch: bool = False, poll_seconds: int = 60, timeout_seconds: int = 24 * 3600,
             vocab_file: Optional[str] = None,
             imports: Sequence[str] = ("kosmos_jax.evaluation.shapes",)) -> dict[int, dict]:
  """Evaluates `checkpoint` on `tasks` ((task, split) pairs, or names for `tasks.DEFAULT_SPLIT`).

  watch: on a training run directory, evaluate each checkpoint step once as it appears; stop
    when the run has written train_summary.json and every step is done, or after
    `timeout_seconds` without a new checkpoint.
  imports: modules that register eval tasks (e.g. your own), imported first.
  """
  for module in imports:
    importlib.import_module(module)
  checkpoint, output_dir = paths.resolve(checkpoint), paths.resolve(output_dir)
  vocab_file = paths.resolve(vocab_file)
  if not os.path.isdir(checkpoint):
    raise FileNotFoundError(f"CHECKPOINT_DIR {checkpoint!r} is not a directory; set "
                            "--gin.CHECKPOINT_DIR=\"'path/to/run'\"")
  os.makedirs(output_dir, exist_ok=True)
  writer = metric_writers.create_default_writer(output_dir,
                                                just_logging=jax.process_index() > 0)
  kwargs = dict(num_examples=num_examples, k_shot=k_shot, batch_size=batch_size,
                vocab_file=vocab_file, writer=writer)
  done: dict[int, dict] = {}
  if not watch:
    steps = _checkpoint_steps(checkpoint)
    step = steps[-1] if steps else 0
    done[step] = evaluate_once(checkpoint, tasks, output_dir, step=step, **kwargs)
    return done
  last_new = time.time()
  while True:
    pending = [s for s in _checkpoint_steps(checkpoint) if s not in done]
    for step in pending:
      done[step] = evaluate_once(checkpoint, tasks, output_dir, step=step, **kwargs)
      last_new = time.time()
    finished = os.path.exists(os.path.join(checkpoint, run_dir_lib.TRAIN_SUMMARY))
    if (finished and not pending) or time.time() - last_new > timeout_seconds:
      return done
    time.sleep(poll_seconds)


if __name__ == "__main__":
  flags.adopt_module_key_flags(gin_utils)   # --help lists the gin flags
  gin_utils.run_entry_point("kosmos_jax.eval", "evaluate")
