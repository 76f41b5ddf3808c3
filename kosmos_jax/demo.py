"""`make demo`: trains the tiny Kosmos on the built-in shapes world on CPU, checkpoints,
evaluates on held-out images and prints a short report.

  python -m kosmos_jax.demo --model_dir=demo_run [--fresh] [--train_steps=N] [--gin_bindings=B]

Re-running with the same model_dir resumes (or, if training finished, only evaluates).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any, Optional, Sequence

from absl import flags
from absl import logging
import gin
import jax

from kosmos_jax import cli
from kosmos_jax import gin_utils
from kosmos_jax import paths
from kosmos_jax.data import synthetic
from kosmos_jax.evaluation import report_html
from kosmos_jax.checkpointing import run_dir as run_dir_lib

_MODEL_DIR = flags.DEFINE_string("model_dir", "demo_run", "run directory")
_FRESH = flags.DEFINE_bool("fresh", False, "delete model_dir first")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", None, "override TRAIN_STEPS of the experiment")
_GIN_FILE = flags.DEFINE_string("experiment", "experiments/shapes_tiny.gin", "experiment gin")
REPORT_HTML = "report.html"
_EVAL_EXAMPLES = flags.DEFINE_integer("eval_examples", 700, "held-out examples per eval task")


def loss_curve(model_dir: str, points: int = 6) -> list[tuple[int, float]]:
  """(step, train loss) at evenly spaced logged steps, from metrics.jsonl."""
  records = []
  with open(os.path.join(model_dir, run_dir_lib.METRICS)) as f:
    for line in f:
      record = json.loads(line)
      if "train/loss" in record:
        records.append((record["step"], record["train/loss"]))
  latest = {}
  for step, loss in records:          # a resumed run may log a step twice: keep the last
    latest[step] = loss
  steps = sorted(latest)
  if len(steps) <= points:
    return [(s, latest[s]) for s in steps]
  picks = [steps[round(i * (len(steps) - 1) / (points - 1))] for i in range(points)]
  return [(s, latest[s]) for s in picks]


def format_report(curve, eval_metrics: dict[str, dict[str, float]], generation: Optional[dict],
                  train_seconds: float,
                  eval_start: Optional[dict[str, dict[str, float]]] = None) -> str:
  lines = ["", "=" * 72, "kosmos-jax demo: tiny Kosmos on the shapes world", "=" * 72,
           f"training wall time: {train_seconds:.0f} s", "", "train loss:"]
  lines += [f"  step {step:>6}: {loss:.4f}" for step, loss in curve]
  if eval_metrics:
    lines += ["", "held-out (validation) teacher-forced metrics:"]
    for task, metrics in eval_metrics.items():
      start = (eval_start or {}).get(task)
      before = f"   (step 0: loss {start['loss']:.4f})" if start else ""
      lines.append(f"  {task:<20} loss {metrics['loss']:.4f}   token accuracy "
                   f"{metrics['accuracy']:.3f}{before}")
  if generation:
    lines += ["", generation["report"]]
  return "\n".join(lines)


def run(model_dir: str, experiment: str, train_steps: Optional[int], eval_examples: int,
        extra_bindings: Sequence[str] = ()) -> dict[str, Any]:
  bindings = [f"MODEL_DIR='{model_dir}'"] + list(extra_bindings)
  if train_steps:
    bindings.append(f"TRAIN_STEPS={train_steps}")
  gin_utils.parse([experiment], bindings)
  from kosmos_jax import train as train_script  # pylint: disable=g-import-not-at-top
  start = time.time()
  result = gin.get_configurable(train_script.train)()
  train_seconds = time.time() - start
  from kosmos_jax.evaluation import shapes as shapes_eval  # pylint: disable=g-import-not-at-top
  summary = result.summary
  generation = shapes_eval.evaluate(result.trainer.model, result.state.params,
                                    num_examples=eval_examples)
  eval_start = summary.get("eval_start")     # train() carries it over from an earlier run
  report = format_report(loss_curve(model_dir), summary.get("eval", {}), generation,
                         train_seconds, eval_start)
  if jax.process_index() == 0:
    with open(os.path.join(model_dir, "report.txt"), "w") as f:
      f.write(report + "\n")
    with open(os.path.join(model_dir, "report.json"), "w") as f:
      json.dump({"train_seconds": train_seconds, "eval_start": eval_start,
                 "eval": summary.get("eval", {}),
                 "generation": generation["metrics"]},
                f, indent=1)
    report_html.write(os.path.join(model_dir, REPORT_HTML),
                      "kosmos-jax demo: held-out shapes evals", generation["results"])
  print(report + "\n" + next_steps(model_dir), flush=True)
  return {"summary": summary, "generation": generation, "report": report}


def next_steps(model_dir: str) -> str:
  """Where the HTML report is and how to ask the trained model about one's own image."""
  shown = os.path.relpath(model_dir) if not os.path.relpath(model_dir).startswith("..") \
      else model_dir
  return (f"\nreport with every held-out example: {os.path.join(shown, REPORT_HTML)}\n"
          "ask the trained model about your own image (it knows 32 px coloured shapes):\n"
          f"  python -m kosmos_jax.infer --checkpoint={shown} --image=YOUR_IMAGE.png "
          f"--prompt=\"{synthetic.CAPTION_PROMPT}\"")


def use_all_cpu_cores() -> None:
  """On a CPU host, one XLA device per core lets the data-parallel mesh use every core (one
  device executes on one thread). Must run before JAX initialises its backend."""
  flag = "--xla_force_host_platform_device_count"
  if flag not in os.environ.get("XLA_FLAGS", "") and not os.environ.get("JAX_PLATFORMS"):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" {flag}={max(1, os.cpu_count() or 1)}").strip()


def main(argv: Sequence[str]) -> None:
  del argv
  use_all_cpu_cores()
  if _FRESH.value and os.path.exists(_MODEL_DIR.value):
    shutil.rmtree(_MODEL_DIR.value)
  logging.set_verbosity(logging.WARNING)
  run(paths.resolve(_MODEL_DIR.value), _GIN_FILE.value, _TRAIN_STEPS.value,
      _EVAL_EXAMPLES.value, gin_utils.GIN_BINDINGS.value)


if __name__ == "__main__":
  cli.run(main)
