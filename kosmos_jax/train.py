"""Training entry point, T5X-style:

  python -m kosmos_jax.train --gin_file=experiments/shapes_tiny.gin --gin.MODEL_DIR="'runs/a'"

`train()` is configured entirely by gin (see gin/runs/pretrain.gin). A run directory holds
checkpoints (state + data position + config), metrics.jsonl, TensorBoard events, config.gin,
model_config.json and partitioning.txt. Re-running the same command resumes from the latest
checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Optional, Sequence

import flax.linen as nn
from absl import flags
import jax

from kosmos_jax.checkpointing import checkpointer as checkpointer_lib
from kosmos_jax.checkpointing import params_io
from kosmos_jax.checkpointing import run_dir
from kosmos_jax.evaluation import evaluator
from kosmos_jax.evaluation import tasks as eval_tasks
from kosmos_jax.inference import runner as runner_lib
from kosmos_jax import gin_utils
from kosmos_jax import paths
from kosmos_jax.training import metric_writers as metrics_lib
from kosmos_jax.training import optimizers
from kosmos_jax.training import partitioning
from kosmos_jax.training import trainer as trainer_lib
from kosmos_jax.data import pipeline
from kosmos_jax.data import dataset_config as dataset_lib
from kosmos_jax.data import feature_converters
from kosmos_jax.data import preprocessors
from kosmos_jax.models import config as config_lib


def _write(model_dir: str, name: str, text: str) -> None:
  """Process 0 writes `name` whole (`paths.write_text_whole`)."""
  if jax.process_index() == 0:
    paths.write_text_whole(os.path.join(model_dir, name), text)


def training_vocabulary(dataset: dataset_lib.DatasetConfig):
  """The vocabulary of the training mixture/task's `targets`."""
  provider = pipeline.get_mixture_or_task(dataset.mixture_or_task_name)
  return provider.output_features["targets"].vocabulary


def evaluation_fn(datasets: Sequence[dataset_lib.DatasetConfig], trainer: trainer_lib.Trainer,
                  model: config_lib.KosmosConfig, eval_batches: int,
                  inference_evals: Sequence[Any] = (), inference_examples: int = 100,
                  vocabulary: Any = None):
  """params -> {task: metrics}: teacher-forced loss/accuracy for `datasets`, each task on its
  own, plus generation/scoring metrics for `inference_evals` ((eval task, split) pairs)."""
  def run(params) -> dict[str, dict[str, float]]:
    results = {}
    if inference_evals:
      runner = runner_lib.Runner(trainer.model, params, vocabulary)
      for item in inference_evals:
        name, split = eval_tasks.task_and_split(item)
        result = evaluator.run_task(runner, name, split=split, num_examples=inference_examples)
        results[f"{name}:{split}"] = result.metrics
    for ds in datasets:
      it = dataset_lib.make_iterator(ds, num_image_tokens=model.num_image_tokens,
                                     image_size=model.vision.image_size, shuffle=False,
                                     num_epochs=1, drop_remainder=True)
      batches = (b for i, b in enumerate(it) if eval_batches < 0 or i < eval_batches)
      results[ds.mixture_or_task_name] = trainer.evaluate(params, batches)
    return results
  return run


@dataclasses.dataclass
class AbstractTrainStep:
  """The train step lowered from shapes alone (`train(abstract_only=True)`)."""
  lowered: Any          # jax.stages.Lowered
  state: Any            # abstract TrainState (ShapeDtypeStructs with shardings)
  batch: dict[str, jax.ShapeDtypeStruct]


@dataclasses.dataclass
class TrainResult:
  """What `train` returns. `summary` is JSON-ready: per-step `losses`, the last `eval` (and
  `eval_start`), `final_step`, `preempted`; empty, with `abstract` set, for abstract_only."""
  trainer: trainer_lib.Trainer
  state: Optional[Any]
  summary: dict[str, Any]
  abstract: Optional[AbstractTrainStep] = None


def train(*, model_dir: str, model: config_lib.KosmosConfig,
          train_dataset: dataset_lib.DatasetConfig,
          eval_datasets: Sequence[dataset_lib.DatasetConfig] = (),
          mesh: partitioning.MeshConfig = partitioning.MeshConfig(),
          optimizer: optimizers.OptimizerConfig = optimizers.OptimizerConfig(),
          trainer: trainer_lib.TrainerConfig = trainer_lib.TrainerConfig(),
          init_checkpoint_dir: Optional[str] = None,
          inference_evals: Sequence[Any] = (),
          inference_eval_examples: int = 100,
          abstract_only: bool = False) -> TrainResult:
  """Trains (or resumes) a Kosmos model.

  Args:
    model_dir: run directory (checkpoints, metrics, configs).
    model: the model config (gin: `MODEL_CONFIG = @model_config.get_config()`).
    train_dataset / eval_datasets: SeqIO mixture or task to train on / evaluate teacher-forced.
    mesh: device mesh sizes and the logical-axis rule preset.
    optimizer, trainer: see `optimizers.OptimizerConfig`, `trainer.TrainerConfig`.
    init_checkpoint_dir: weights-only checkpoint (`checkpointing.params_io` format, e.g.
      converted from Hugging Face) to start from when the run has no checkpoint of its own.
    inference_evals: eval tasks (`kosmos_jax.evaluation.tasks`) run with decoding/scoring at
      every eval, as names (`tasks.DEFAULT_SPLIT`) or (name, split) pairs, on
      `inference_eval_examples` examples each; e.g. [('shapes_eval_vqa', 'validation')].
    abstract_only: build the mesh, shardings and train step from shapes alone and lower it (no
      parameters allocated, no data read): a quick "does it partition / fit" check on any host.
  """
  model_dir = paths.resolve(model_dir)
  init_checkpoint_dir = paths.resolve(init_checkpoint_dir)
  run_dir.check_writable(model_dir)
  device_mesh = partitioning.make_mesh(mesh)
  partitioning.check_batch_size(train_dataset.batch_size, device_mesh, trainer.num_microbatches)
  run_trainer = trainer_lib.Trainer(model, optimizer, trainer, device_mesh, mesh.rules)
  gin_text = _write_run_files(model_dir, run_trainer, mesh.rules)
  if abstract_only:
    return TrainResult(run_trainer, None, {},
                       lower_abstract_train_step(run_trainer, train_dataset, model))

  train_iter = dataset_lib.make_iterator(train_dataset, num_image_tokens=model.num_image_tokens,
                                         image_size=model.vision.image_size)
  checkpointer = checkpointer_lib.Checkpointer(model_dir, keep=trainer.keep_checkpoints,
                                               keep_period=trainer.keep_period,
                                               async_save=trainer.async_checkpoints)
  state = _restore_or_init(run_trainer, checkpointer, train_iter, init_checkpoint_dir)
  vocabulary = training_vocabulary(train_dataset)
  if jax.process_index() == 0 and hasattr(vocabulary, "sentencepiece_model_file"):
    run_dir.save_vocabulary(vocabulary, model_dir)   # so infer/eval find it
  logger = metrics_lib.MetricsLogger(model_dir, trainer.total_steps)
  eval_fn = None
  if eval_datasets or inference_evals:
    eval_fn = evaluation_fn(eval_datasets, run_trainer, model, trainer.eval_batches,
                            inference_evals, inference_eval_examples, vocabulary)
  record = {"gin": gin_text, "model_config": config_lib.to_dict(model)}
  batch_shape = (train_dataset.batch_size, train_dataset.length, train_dataset.max_images)
  state, summary = trainer_lib.run(
      run_trainer, state, train_iter, checkpointer=checkpointer, logger=logger, eval_fn=eval_fn,
      config_record=record, batch_shape=batch_shape, data_stats=preprocessors.record_counts)
  checkpointer.close()
  logger.close()
  _write_summary(model_dir, summary)
  return TrainResult(run_trainer, state, summary)


def _write_run_files(model_dir: str, run_trainer: trainer_lib.Trainer, rules: str) -> str:
  """config.gin, model_config.json and partitioning.txt; returns the operative gin text."""
  gin_text = gin_utils.operative_config()
  _write(model_dir, run_dir.CONFIG_GIN, gin_text)
  _write(model_dir, run_dir.MODEL_CONFIG,
         json.dumps(config_lib.to_dict(run_trainer.model_config), indent=2))
  layout = partitioning.describe(run_trainer.factory.shardings, run_trainer.factory.abstract,
                                 run_trainer.mesh, rules)
  _write(model_dir, run_dir.PARTITIONING, layout)
  logging.info("%s", layout.split("per-array")[0])
  return gin_text


def _restore_or_init(run_trainer: trainer_lib.Trainer, checkpointer, train_iter,
                     init_checkpoint_dir: Optional[str]):
  """The latest checkpoint of the run (state and data position), else fresh params (or those
  of `init_checkpoint_dir`)."""
  latest = checkpointer.latest_step()
  if latest is not None:
    logging.info("resuming from checkpoint step %d in %s", latest, checkpointer.directory)
    return checkpointer.restore(latest, run_trainer.factory.abstract_with_shardings(),
                                data_iterator=train_iter)
  state = run_trainer.init_state()
  if init_checkpoint_dir:
    params, loaded_config = params_io.load_params(
        init_checkpoint_dir, target=run_trainer.factory.abstract_with_shardings().params)
    logging.info("initialised params from %s (%s)", init_checkpoint_dir, loaded_config)
    state = run_trainer.factory.with_params(state, params)
  return state


def _write_summary(model_dir: str, summary: dict[str, Any]) -> None:
  """train_summary.json (eval watchers stop on it); a resumed run keeps its step-0 eval.
  Every process reads the previous one, process 0 replaces it whole (see `_write`)."""
  summary_path = os.path.join(model_dir, run_dir.TRAIN_SUMMARY)
  if "eval_start" not in summary and os.path.exists(summary_path):
    with open(summary_path) as f:
      previous = json.load(f).get("eval_start")
    if previous is not None:
      summary["eval_start"] = previous
  record = ({k: v for k, v in summary.items() if k != "losses"}
            | {"losses": {str(k): v for k, v in summary["losses"].items()}})
  _write(model_dir, run_dir.TRAIN_SUMMARY, json.dumps(record, indent=1))


def lower_abstract_train_step(run_trainer: trainer_lib.Trainer,
                              dataset: dataset_lib.DatasetConfig,
                              model: config_lib.KosmosConfig) -> AbstractTrainStep:
  """Lowers the train step on ShapeDtypeStructs (state and batch) with the run's shardings."""
  mesh = run_trainer.mesh
  data = partitioning.data_sharding(mesh)
  v = model.vision
  batch = {name: jax.ShapeDtypeStruct(shape, dtype, sharding=data)
           for name, (shape, dtype) in feature_converters.batch_shapes(
               dataset.batch_size, dataset.length, dataset.max_images, v.image_size,
               v.num_channels).items()}
  state = run_trainer.factory.abstract_with_shardings()
  rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
  with jax.set_mesh(mesh), nn.logical_axis_rules(run_trainer.rules):
    lowered = run_trainer._train_step.lower(state, batch, rng)  # pylint: disable=protected-access
  return AbstractTrainStep(lowered, state, batch)


if __name__ == "__main__":
  flags.adopt_module_key_flags(gin_utils)   # --help lists the gin flags
  gin_utils.run_entry_point("kosmos_jax.train", "train")
