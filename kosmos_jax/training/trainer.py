"""Jitted train and eval steps (gradient accumulation, trainability, non-finite handling) and the
training loop: log / eval / checkpoint when it is time, preemption-safe, resumable."""
from __future__ import annotations

import dataclasses
import logging
import signal
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec
import optax

from kosmos_jax.training import flops as flops_lib
from kosmos_jax.training import losses
from kosmos_jax.training import metric_writers as metrics_lib
from kosmos_jax.training import optimizers
from kosmos_jax.training import partitioning
from kosmos_jax.training import train_state as train_state_lib
from kosmos_jax.models import kosmos
from kosmos_jax.models.config import KosmosConfig
from kosmos_jax.training import xla_cpu

NONFINITE_POLICIES = ("stop", "skip")


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
  total_steps: int = 1000
  log_every: int = 50
  eval_every: int = 0              # 0: evaluate only at the end
  eval_at_start: bool = False      # also evaluate the initial params of a fresh run (step 0)
  eval_batches: int = 20           # per eval task; -1 = the whole split
  checkpoint_every: int = 500
  keep_checkpoints: int = 3
  keep_period: Optional[int] = None  # also keep every K-th step
  async_checkpoints: bool = True
  num_microbatches: int = 1
  on_nonfinite: str = "stop"       # "stop": raise with step and last good checkpoint; "skip"
  seed: int = 0
  peak_flops_per_device: Optional[float] = None
  # The output layer + loss in this many slices of the sequence (rounded down to a divisor of
  # the length): the batch's [tokens, vocab] logits never exist at once (MaxText's vocabulary
  # tiling; `losses.output_layer_statistics`). 1: in one piece.
  loss_chunks: int = 4


class NonFiniteError(RuntimeError):
  pass


def itstime(step: int, every: int, total: int) -> bool:
  """True on multiples of `every` and at the last step (big_vision's u.itstime)."""
  return step == total or (every > 0 and step % every == 0)


class Trainer:
  """Owns the model, optimizer, mesh placement and the jitted steps."""

  def __init__(self, model_config: KosmosConfig, optimizer_config: optimizers.OptimizerConfig,
               config: TrainerConfig, mesh, rules_name: str = "fsdp"):
    if config.on_nonfinite not in NONFINITE_POLICIES:
      raise ValueError(f"on_nonfinite={config.on_nonfinite!r}; choose {NONFINITE_POLICIES}")
    self.model_config, self.config, self.mesh = model_config, config, mesh
    self.rules_name, self.rules = rules_name, partitioning.get_rules(rules_name)
    self.model = kosmos.Kosmos(model_config)
    self.vision_trainable = optimizers.resolve_vision_trainable(
        optimizer_config, model_config.vision_trainable)
    self.schedule = optimizers.learning_rate_schedule(optimizer_config, config.total_steps)
    tx_factory = lambda params: optimizers.make_optimizer(
        optimizer_config, params, self.schedule, self.vision_trainable)
    self.factory = train_state_lib.StateFactory(model_config, tx_factory, mesh, self.rules)
    self.trainable = optimizers.trainable_filter(self.factory.abstract.params, optimizer_config,
                                                 self.vision_trainable)
    replicated = partitioning.replicated(mesh)
    options = xla_cpu.compiler_options(mesh.devices.flat)   # oneDNN GEMMs on CPU meshes
    self._train_step = jax.jit(self._train_step_fn, donate_argnums=(0,),
                               out_shardings=(self.factory.shardings, replicated),
                               compiler_options=options)
    self._eval_step = jax.jit(self._eval_step_fn, out_shardings=replicated,
                              compiler_options=options)

  # ----------------------------------------------------------------------------- steps
  def _loss(self, params, batch, rng, denom):
    """The mean loss over the step's `denom` loss weights (data, not differentiated): scaling
    here rather than dividing the gradients afterwards saves a pass over all of them, and XLA
    kept both the raw and the divided table gradient alive through the vision backward."""
    params = jax.tree_util.tree_map(lambda p, t: p if t else jax.lax.stop_gradient(p),
                                    params, self.trainable)
    stats = self._statistics(params, batch, deterministic=False, dropout_rng=rng)
    return stats["loss_sum"] / denom, stats

  def _statistics(self, params, batch, **model_kwargs):
    """Loss/weight/correct sums of a batch, the output layer in `loss_chunks` slices."""
    hidden, table = losses.model_logits(self.model, params, batch, output="hidden",
                                        **model_kwargs)
    return losses.output_layer_statistics(hidden, table, batch["decoder_target_tokens"],
                                           batch["decoder_loss_weights"],
                                           self.config.loss_chunks)

  def _train_step_fn(self, state: train_state_lib.TrainState, batch, rng):
    k = self.config.num_microbatches
    step_rng = jax.random.fold_in(rng, state.step)
    grad_fn = jax.value_and_grad(self._loss, has_aux=True)
    # the whole step's loss weight (all microbatches): each gradient is already of the mean
    denom = jnp.maximum(jnp.sum(batch["decoder_loss_weights"].astype(jnp.float32)), 1.0)
    if k == 1:
      (_, stats), grads = grad_fn(state.params, batch, step_rng, denom)
    else:
      # Microbatch i takes rows i, i+k, i+2k, ...: every data shard contributes to every
      # microbatch, so no resharding is needed.  # [k, batch/k, ...]
      micro_sharding = NamedSharding(self.mesh, PartitionSpec(None, partitioning.BATCH_AXES))
      micro = jax.tree_util.tree_map(
          lambda x: jax.lax.with_sharding_constraint(
              x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1), micro_sharding),
          batch)

      def accumulate(carry, inputs):
        index, microbatch = inputs
        (_, s), g = grad_fn(state.params, microbatch, jax.random.fold_in(step_rng, index), denom)
        return jax.tree_util.tree_map(jnp.add, carry, (g, s)), None
      zeros = (jax.tree_util.tree_map(jnp.zeros_like, state.params),
               {"loss_sum": 0.0, "weight_sum": 0.0, "correct_sum": 0.0})
      zeros = jax.tree_util.tree_map(jnp.asarray, zeros)
      (grads, stats), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(k), micro))
    loss = stats["loss_sum"] / denom
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_state = state.apply_gradients(grads)
    if self.config.on_nonfinite == "skip":
      kept = state.replace(step=state.step + 1)
      new_state = jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new_state, kept)
    step_metrics = {
        **stats, **losses.batch_counts(batch),
        "grad_norm": grad_norm, "learning_rate": self.schedule(state.step),
        "nonfinite": 1.0 - finite.astype(jnp.float32)}
    return new_state, step_metrics

  def _eval_step_fn(self, params, batch):
    return self._statistics(params, batch, deterministic=True)

  # ----------------------------------------------------------------------------- public
  def init_state(self, seed: Optional[int] = None) -> train_state_lib.TrainState:
    return self.factory.init(jax.random.key(self.config.seed if seed is None else seed))

  def train_step(self, state, batch, rng):
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      return self._train_step(state, batch, rng)

  def evaluate(self, params, batches: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Teacher-forced loss and token accuracy over `batches` (host-local numpy dicts)."""
    totals = None
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      for local in batches:
        stats = self._eval_step(params, partitioning.global_batch(local, self.mesh))
        totals = stats if totals is None else jax.tree_util.tree_map(jnp.add, totals, stats)
    if totals is None:
      return {}
    totals = jax.device_get(totals)
    weight = max(float(totals["weight_sum"]), 1.0)
    return {"loss": float(totals["loss_sum"]) / weight,
            "accuracy": float(totals["correct_sum"]) / weight,
            "tokens": float(totals["weight_sum"])}


class _PreemptionFlag:
  """Set by SIGTERM (a preemption notice) or, on several hosts, JAX's preemption sync point:
  the loop saves a checkpoint and exits cleanly."""

  def __init__(self):
    self.requested = False
    self._previous = {}

  def install(self):
    for sig in (signal.SIGTERM,):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread (e.g. inside some test runners)
        pass

  def _handle(self, signum, frame):
    del frame
    logging.warning("received signal %d: will checkpoint and stop after this step", signum)
    self.requested = True

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return bool(multihost_utils.reached_preemption_sync_point(step)) or self.requested
    return self.requested

  def uninstall(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


class _MetricsWindow:
  """Step metrics summed on device since the last log line (no host sync per step)."""

  def __init__(self, start_step: int):
    self.reset(start_step)

  def reset(self, step: int) -> None:
    self.sums, self.steps, self.start_step, self.start_time = None, 0, step, time.time()

  def add(self, step_metrics: Mapping[str, Any]) -> None:
    self.sums = step_metrics if self.sums is None else jax.tree_util.tree_map(
        jnp.add, self.sums, step_metrics)
    self.steps += 1


class _Loop:
  """The state of one `run`: the train state, the metrics window, the last good checkpoint."""

  def __init__(self, trainer: Trainer, state: train_state_lib.TrainState, train_iter, *,
               checkpointer, logger, eval_fn, config_record, batch_shape, data_stats):
    self.trainer, self.cfg, self.state, self.train_iter = trainer, trainer.config, state, train_iter
    self.checkpointer, self.logger, self.eval_fn = checkpointer, logger, eval_fn
    self.config_record, self.data_stats = config_record, data_stats
    self.start_step = int(jax.device_get(state.step))
    self.window = _MetricsWindow(self.start_step)
    self.last_good_checkpoint = checkpointer.latest_step() if checkpointer else None
    self.flops = None
    if batch_shape is not None:
      self.flops = flops_lib.train_flops_per_step(trainer.model_config, *batch_shape,
                                                  vision_trainable=trainer.vision_trainable)
    self.peak = flops_lib.peak_flops_per_device(trainer.mesh.devices.flat[0],
                                                self.cfg.peak_flops_per_device)
    self.num_devices = trainer.mesh.devices.size

  def save(self, step: int, force: bool = False) -> None:
    if self.checkpointer is not None and self.checkpointer.save(
        step, self.state, data_iterator=self.train_iter, config=self.config_record, force=force):
      self.last_good_checkpoint = step

  def _check_finite(self, host: Mapping[str, Any], step: int) -> None:
    if host["nonfinite"] > 0 and self.cfg.on_nonfinite == "stop":
      where = getattr(self.checkpointer, "directory", "no checkpointer")
      raise NonFiniteError(
          f"non-finite loss or gradient norm between steps {self.window.start_step + 1} and "
          f"{step}; last good checkpoint: {self.last_good_checkpoint} (in {where}). "
          "Lower the learning rate, check the data, or set on_nonfinite='skip'.")

  def flush_metrics(self, step: int) -> None:
    """Logs the window's means and rates; also the non-finite guard before any checkpoint."""
    host = jax.device_get(self.window.sums)
    steps, elapsed = self.window.steps, time.time() - self.window.start_time
    self._check_finite(host, step)
    weight = max(host["weight_sum"], 1.0)
    scalars = {
        "train/loss": host["loss_sum"] / weight,
        "train/accuracy": host["correct_sum"] / weight,
        "train/grad_norm": host["grad_norm"] / steps,
        "train/learning_rate": host["learning_rate"] / steps,
        "train/step_time": elapsed / steps,
        "train/tokens_per_sec": host["tokens"] / elapsed,
        "train/examples_per_sec": host["examples"] / elapsed,
        "train/nonfinite_steps": host["nonfinite"],
    }
    if self.flops is not None:
      achieved = self.flops * steps / elapsed / self.num_devices
      scalars["train/model_tflops_per_device"] = achieved / 1e12
      if self.peak:
        scalars["train/mfu"] = achieved / self.peak
    if self.data_stats is not None:
      scalars.update({f"data/{k}": v for k, v in self.data_stats().items()})
    if self.logger is not None:
      self.logger.write(step, scalars)
      self.logger.progress(step, scalars)
    self.window.reset(step)

  def evaluate(self, step: int) -> dict[str, dict[str, float]]:
    results = self.eval_fn(self.state.params)
    if self.logger is not None:
      self.logger.write(step, {f"eval/{task}/{k}": v for task, m in results.items()
                               for k, v in m.items()})
    self.window.start_time = time.time()  # do not count eval in the throughput window
    return results


def run(trainer: Trainer, state: train_state_lib.TrainState, train_iter: Iterator[dict],
        *, checkpointer=None, logger: Optional[metrics_lib.MetricsLogger] = None,
        eval_fn: Optional[Callable[[Any], dict[str, dict[str, float]]]] = None,
        config_record: Optional[dict] = None, batch_shape: Optional[tuple[int, int, int]] = None,
        data_stats: Optional[Callable[[], Mapping[str, float]]] = None
        ) -> tuple[train_state_lib.TrainState, dict[str, Any]]:
  """The loop. Returns (final state, summary) with per-step losses and the last eval metrics.

  eval_fn(params) -> {task: {metric: value}} runs at eval_every and at the end (and at step 0
  of a fresh run with eval_at_start; those metrics are summary["eval_start"]).
  batch_shape = (global batch, length, images per row) enables FLOPs / MFU reporting.
  """
  loop = _Loop(trainer, state, train_iter, checkpointer=checkpointer, logger=logger,
               eval_fn=eval_fn, config_record=config_record, batch_shape=batch_shape,
               data_stats=data_stats)
  cfg, total = trainer.config, trainer.config.total_steps
  rng = jax.random.key(cfg.seed + 1)
  preemption = _PreemptionFlag()
  preemption.install()
  summary: dict[str, Any] = {"losses": {}, "eval": {}, "preempted": False}
  step = loop.start_step
  if eval_fn is not None and cfg.eval_at_start and step == 0:
    summary["eval_start"] = loop.evaluate(0)
  try:
    while step < total:
      batch = partitioning.global_batch(next(train_iter), trainer.mesh)
      loop.state, step_metrics = trainer.train_step(loop.state, batch, rng)
      step += 1
      summary["losses"][step] = step_metrics["loss_sum"] / jnp.maximum(step_metrics["weight_sum"], 1)
      loop.window.add(step_metrics)
      preempted = preemption.should_stop(step)
      checkpoint_now = itstime(step, cfg.checkpoint_every, total)
      if itstime(step, cfg.log_every, total) or preempted or checkpoint_now:
        loop.flush_metrics(step)
      if eval_fn is not None and itstime(step, cfg.eval_every, total):
        summary["eval"] = loop.evaluate(step)
      if preempted:
        loop.save(step, force=True)
        summary["preempted"] = True
        logging.warning("preempted at step %d: checkpoint saved, exiting", step)
        break
      if checkpoint_now:
        loop.save(step, force=step == total)
  finally:
    preemption.uninstall()
    if checkpointer is not None:
      checkpointer.wait()
    if logger is not None:
      logger.flush()
  summary["losses"] = {k: float(v) for k, v in jax.device_get(summary["losses"]).items()}
  summary["final_step"] = step
  return loop.state, summary
