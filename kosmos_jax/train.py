"""Training entry point, T5X-style:

  python -m kosmos_jax.train --gin_file=experiments/shapes_tiny.gin \
      --gin.MODEL_DIR="'/tmp/run'" --gin.TRAIN_STEPS=2000

`train()` is configured entirely by gin (see gin/runs/pretrain.gin). A run directory holds
checkpoints (state + data position + config), metrics.jsonl, TensorBoard events, config.gin,
model_config.json and partitioning.txt. Re-running the same command resumes from the latest
checkpoint.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from typing import Any, Optional, Sequence

from absl import app
import flax.linen as nn
import gin
import jax
import numpy as np

from kosmos_jax import checkpoints
from kosmos_jax import gin_utils
from kosmos_jax import metrics as metrics_lib
from kosmos_jax import optimizers
from kosmos_jax import partitioning
from kosmos_jax import trainer as trainer_lib
from kosmos_jax.data import dataset_config as dataset_lib
from kosmos_jax.data import preprocessors
from kosmos_jax.models import config as config_lib

def _write(model_dir: str, name: str, text: str) -> None:
  if jax.process_index() == 0:
    with open(os.path.join(model_dir, name), "w") as f:
      f.write(text)


def evaluation_fn(datasets: Sequence[dataset_lib.DatasetConfig], trainer: trainer_lib.Trainer,
                  model: config_lib.KosmosConfig, eval_batches: int):
  """params -> {task: {loss, accuracy, tokens}}, teacher-forced, each task on its own."""
  def run(params) -> dict[str, dict[str, float]]:
    results = {}
    for ds in datasets:
      it = dataset_lib.make_iterator(ds, num_image_tokens=model.num_image_tokens,
                                     image_size=model.vision.image_size, shuffle=False,
                                     num_epochs=1, drop_remainder=True)
      batches = (b for i, b in enumerate(it) if eval_batches < 0 or i < eval_batches)
      results[ds.mixture_or_task_name] = trainer.evaluate(params, batches)
    return results
  return run


def train(*, model_dir: str, model: config_lib.KosmosConfig,
          train_dataset: dataset_lib.DatasetConfig,
          eval_datasets: Sequence[dataset_lib.DatasetConfig] = (),
          mesh: partitioning.MeshConfig = partitioning.MeshConfig(),
          optimizer: optimizers.OptimizerConfig = optimizers.OptimizerConfig(),
          trainer: trainer_lib.TrainerConfig = trainer_lib.TrainerConfig(),
          init_checkpoint_dir: Optional[str] = None,
          abstract_only: bool = False) -> dict[str, Any]:
  """Trains (or resumes) a Kosmos model; returns a summary with per-step losses and eval metrics.

  Args:
    model_dir: run directory (checkpoints, metrics, configs).
    model: the model config (gin: `MODEL_CONFIG = @model_config.get_config()`).
    train_dataset / eval_datasets: SeqIO mixture or task to train on / evaluate teacher-forced.
    mesh: device mesh sizes and the logical-axis rule preset.
    optimizer, trainer: see `optimizers.OptimizerConfig`, `trainer.TrainerConfig`.
    init_checkpoint_dir: weights-only checkpoint (`kosmos_jax.params_io` format, e.g. converted
      from Hugging Face) to start from when the run has no checkpoint of its own.
    abstract_only: build the mesh, shardings and train step from shapes alone and lower it (no
      parameters allocated, no data read): a quick "does it partition / fit" check on any host.
  """
  os.makedirs(model_dir, exist_ok=True)
  device_mesh = partitioning.make_mesh(mesh)
  partitioning.check_batch_size(train_dataset.batch_size, device_mesh, trainer.num_microbatches)
  run_trainer = trainer_lib.Trainer(model, optimizer, trainer, device_mesh, mesh.rules)
  gin_text = gin_utils.operative_config()
  _write(model_dir, "config.gin", gin_text)
  _write(model_dir, "model_config.json", json.dumps(config_lib.to_dict(model), indent=2))
  layout = partitioning.describe(run_trainer.factory.shardings, run_trainer.factory.abstract,
                                 device_mesh, mesh.rules)
  _write(model_dir, "partitioning.txt", layout)
  logging.info("%s", layout.split("per-array")[0])
  if abstract_only:
    return lower_abstract_train_step(run_trainer, train_dataset, model)

  train_iter = dataset_lib.make_iterator(train_dataset, num_image_tokens=model.num_image_tokens,
                                         image_size=model.vision.image_size)
  checkpointer = checkpoints.Checkpointer(model_dir, keep=trainer.keep_checkpoints,
                                          keep_period=trainer.keep_period,
                                          async_save=trainer.async_checkpoints)
  latest = checkpointer.latest_step()
  if latest is not None:
    logging.info("resuming from checkpoint step %d in %s", latest, checkpointer.directory)
    state = checkpointer.restore(latest, run_trainer.factory.abstract_with_shardings(),
                                 data_iterator=train_iter)
  else:
    state = run_trainer.init_state()
    if init_checkpoint_dir:
      from kosmos_jax import params_io  # pylint: disable=g-import-not-at-top
      params, loaded_config = params_io.load_params(
          init_checkpoint_dir, target=run_trainer.factory.abstract_with_shardings().params)
      logging.info("initialised params from %s (%s)", init_checkpoint_dir, loaded_config)
      state = run_trainer.factory.with_params(state, params)

  logger = metrics_lib.MetricsLogger(model_dir, trainer.total_steps)
  eval_fn = (evaluation_fn(eval_datasets, run_trainer, model, trainer.eval_batches)
             if eval_datasets else None)
  record = {"gin": gin_text, "model_config": config_lib.to_dict(model)}
  batch_shape = (train_dataset.batch_size, train_dataset.length, train_dataset.max_images)
  state, summary = trainer_lib.run(
      run_trainer, state, train_iter, checkpointer=checkpointer, logger=logger, eval_fn=eval_fn,
      config_record=record, batch_shape=batch_shape, data_stats=preprocessors.record_counts)
  checkpointer.close()
  logger.close()
  if jax.process_index() == 0:
    with open(os.path.join(model_dir, "train_summary.json"), "w") as f:
      json.dump({k: v for k, v in summary.items() if k != "losses"}
                | {"losses": {str(k): v for k, v in summary["losses"].items()}}, f, indent=1)
  summary["state"] = state
  summary["trainer"] = run_trainer
  return summary


def lower_abstract_train_step(run_trainer: trainer_lib.Trainer,
                              dataset: dataset_lib.DatasetConfig,
                              model: config_lib.KosmosConfig) -> dict[str, Any]:
  """Lowers the train step on ShapeDtypeStructs (state and batch); returns the Lowered object."""
  mesh = run_trainer.mesh
  data = partitioning.data_sharding(mesh)
  batch_size, length, images = dataset.batch_size, dataset.length, dataset.max_images
  v = model.vision

  def spec(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=data)
  batch = {name: spec((batch_size, length), np.int32) for name in (
      "decoder_input_tokens", "decoder_target_tokens", "decoder_segment_ids",
      "decoder_positions", "decoder_image_token_mask")}
  batch["decoder_loss_weights"] = spec((batch_size, length), np.float32)
  batch["images"] = spec((batch_size, images, v.image_size, v.image_size, v.num_channels), np.uint8)
  batch["image_mask"] = spec((batch_size, images), np.int32)
  state = run_trainer.factory.abstract_with_shardings()
  rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
  with jax.set_mesh(mesh), nn.logical_axis_rules(run_trainer.rules):
    lowered = run_trainer._train_step.lower(state, batch, rng)  # pylint: disable=protected-access
  return {"lowered": lowered, "state": state, "batch": batch, "trainer": run_trainer}


def main(argv: Sequence[str]) -> None:
  del argv
  gin_utils.maybe_initialize_distributed()
  gin_utils.parse_from_flags(_EXTRA_BINDINGS)
  # The gin files bind `kosmos_jax.train.train` (dynamic registration); call that module's
  # configured function (this file may be running as __main__, a different module object).
  gin.get_configurable(importlib.import_module("kosmos_jax.train").train)()


_EXTRA_BINDINGS: list[str] = []


def run_main() -> None:
  argv, bindings = gin_utils.split_gin_overrides(sys.argv)
  _EXTRA_BINDINGS.extend(bindings)
  app.run(main, argv=argv)


if __name__ == "__main__":
  run_main()
