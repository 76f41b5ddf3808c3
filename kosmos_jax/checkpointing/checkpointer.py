"""One Orbax CheckpointManager per run directory: train state, data-iterator position and the
operative config, saved together under MODEL_DIR/checkpoints/<step>/.

- `state`: StandardSave of the TrainState; restored against an abstract target that carries the
  *current* mesh's shardings, so a checkpoint written on 8 devices restores on 4.
- `data`: the data position. The training iterator (`data.sharded_iterator`) writes one state
  per virtual data shard, readable on any host count; other iterators with `save(path)` /
  `restore(path)` get one directory per process (`process_<i>`).
- `config`: JSON with the operative gin config and the model config.
Async saves by default; keeps the last N plus every K-th step.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Optional

from etils import epath
import jax
import orbax.checkpoint as ocp
import tensorflow as tf

from kosmos_jax import paths
from kosmos_jax.checkpointing import run_dir


class DataIteratorHandler(ocp.CheckpointHandler):
  """Saves/restores a data iterator per process through its own `save(directory) -> path`
  and `restore(path)` (the path save returns is recorded, relative to the item directory)."""

  def save(self, directory: epath.Path, args: "DataIteratorSave") -> None:
    directory = epath.Path(directory)
    if getattr(args.iterator, "host_independent", False):
      directory.mkdir(parents=True, exist_ok=True)
      args.iterator.save(os.fspath(directory))   # its own layout, readable on any host count
      return
    process_dir = directory / f"process_{jax.process_index()}"
    process_dir.mkdir(parents=True, exist_ok=True)
    written = args.iterator.save(os.fspath(process_dir)) or os.fspath(process_dir)
    relative = os.path.relpath(os.fspath(written), os.fspath(directory))
    (directory / f"process_{jax.process_index()}.path").write_text(relative)
    if jax.process_index() == 0:
      (directory / "process_count").write_text(str(jax.process_count()))

  def restore(self, directory: epath.Path, args: "DataIteratorRestore") -> Any:
    directory = epath.Path(directory)
    if getattr(args.iterator, "host_independent", False):
      if not (directory / "layout.json").exists():
        raise ValueError("the data position was saved per process by an older layout")
      args.iterator.restore(os.fspath(directory))
      return args.iterator
    saved_count = int((directory / "process_count").read_text())
    if saved_count != jax.process_count():
      raise ValueError(f"data iterator was saved by {saved_count} processes, now "
                       f"{jax.process_count()}")
    relative = (directory / f"process_{jax.process_index()}.path").read_text().strip()
    args.iterator.restore(os.fspath(directory / relative))
    return args.iterator


@ocp.args.register_with_handler(DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class DataIteratorSave(ocp.args.CheckpointArgs):
  iterator: Any


@ocp.args.register_with_handler(DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DataIteratorRestore(ocp.args.CheckpointArgs):
  iterator: Any


class Checkpointer:
  """Save / restore of (state, data iterator, config) for one run directory."""

  def __init__(self, model_dir: str, *, keep: int = 3, keep_period: Optional[int] = None,
               async_save: bool = True, read_only: bool = False):
    """read_only: for readers of a run (inference, eval watchers): nothing is created."""
    self.directory = epath.Path(paths.resolve(model_dir)) / run_dir.CHECKPOINTS
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, keep_period=keep_period, enable_async_checkpointing=async_save,
        create=not read_only, read_only=read_only)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, *, data_iterator: Any = None,
           config: Optional[dict] = None, force: bool = False) -> bool:
    """Starts a (possibly async) save; returns whether one was started."""
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None and hasattr(data_iterator, "save"):
      items["data"] = DataIteratorSave(data_iterator)
    if config is not None:
      items["config"] = ocp.args.JsonSave(config)
    saved = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
    if saved:
      logging.info("checkpoint: saving step %d to %s", step, self.directory)
    return saved

  def restore(self, step: int, abstract_state: Any, *, data_iterator: Any = None) -> Any:
    """Restores `state` onto the shardings carried by `abstract_state`; the data iterator too
    when one is given and was saved (a mismatch in process count restarts the data with a
    warning instead of failing the run)."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    if data_iterator is not None and hasattr(data_iterator, "restore"):
      item_dir = self.directory / str(step) / "data"
      if item_dir.exists():
        try:
          DataIteratorHandler().restore(item_dir, DataIteratorRestore(data_iterator))
        except (ValueError, OSError, tf.errors.OpError) as e:
          logging.warning("checkpoint: data position of step %d not restored (%s); the data "
                          "restarts from its beginning", step, e)
      else:
        logging.warning("checkpoint: step %d has no data iterator state; data restarts", step)
    return restored["state"]

  def restore_params(self, step: int, abstract_params: Any) -> Any:
    """Only the params of the saved train state (the optimizer state is not read), onto the
    shardings carried by `abstract_params` (ShapeDtypeStructs)."""
    target = {"params": abstract_params}
    args = ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True)
    return self.manager.restore(step, args=ocp.args.Composite(state=args))["state"]["params"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
