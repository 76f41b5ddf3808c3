"""Checkpoint / resume: preempted-and-resumed training equals straight training (per-step losses
and final params), a killed process resumes from its last checkpoint, and a checkpoint written
on an 8-device mesh restores on a 4-device mesh."""
import json
import os
import signal
import subprocess
import sys
import time

import gin
import jax
import numpy as np
import pytest

from kosmos_jax.checkpointing import checkpointer as checkpointer_lib
from kosmos_jax import gin_utils
from kosmos_jax.training import optimizers
from kosmos_jax.training import partitioning
from tests.helpers import tiny
from kosmos_jax.training import trainer as trainer_lib
from kosmos_jax.data import dataset_config

STEPS = 6
# The shapes experiment shrunk to test size: default tiny model, short rows, no evals.
OVERRIDES = ["MODEL_OVERRIDES={'text.vocab_size': 128, 'connector.num_latents': 8}",
             "TASK_FEATURE_LENGTHS={'targets': 64, 'images': 4}", "BATCH_SIZE=8",
             f"TRAIN_STEPS={STEPS}", "EVAL_DATASETS=[]", "trainer.TrainerConfig.log_every=1",
             f"trainer.TrainerConfig.checkpoint_every={STEPS // 2}",
             "optimizers.OptimizerConfig.warmup_steps=2"]


def run_training(model_dir, extra=()):
  gin.clear_config()
  gin_utils.parse(["experiments/shapes_tiny.gin"],
                  OVERRIDES + [f"MODEL_DIR='{model_dir}'"] + list(extra))
  from kosmos_jax import train as train_script  # pylint: disable=g-import-not-at-top
  try:
    return gin.get_configurable(train_script.train)()
  finally:
    gin.clear_config()


def test_preempted_and_resumed_training_equals_straight_training(tmp_path, monkeypatch):
  straight_result = run_training(tmp_path / "straight")
  straight, straight_state = straight_result.summary, straight_result.state

  real_make_iterator = dataset_config.make_iterator

  class SigtermAfter:
    """Delegates to the real iterator; sends SIGTERM to this process at its N-th batch."""

    def __init__(self, inner, at):
      self.inner, self.at, self.count = inner, at, 0

    def __iter__(self):
      return self

    def __next__(self):
      self.count += 1
      if self.count == self.at:
        os.kill(os.getpid(), signal.SIGTERM)
      return next(self.inner)

    def __getattr__(self, name):   # save, restore, host_independent, ...
      return getattr(self.inner, name)

  monkeypatch.setattr(dataset_config, "make_iterator",
                      lambda *a, **k: SigtermAfter(real_make_iterator(*a, **k), at=2))
  first = run_training(tmp_path / "resumed").summary
  assert first["preempted"] and first["final_step"] == 2
  monkeypatch.setattr(dataset_config, "make_iterator", real_make_iterator)
  second_result = run_training(tmp_path / "resumed")
  second, second_state = second_result.summary, second_result.state
  assert second["final_step"] == STEPS and not second["preempted"]

  losses = {**first["losses"], **second["losses"]}
  assert sorted(losses) == list(range(1, STEPS + 1))
  for step in range(1, STEPS + 1):
    assert losses[step] == straight["losses"][step], step
  for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(straight_state.params)),
                  jax.tree_util.tree_leaves(jax.device_get(second_state.params))):
    np.testing.assert_array_equal(a, b)
  # metrics.jsonl has one object per logged step, with `step`.
  records = [json.loads(line) for line in open(tmp_path / "straight" / "metrics.jsonl")]
  train_records = [r for r in records if "train/loss" in r]
  assert [r["step"] for r in train_records] == list(range(1, STEPS + 1))
  assert {"train/tokens_per_sec", "train/grad_norm", "train/learning_rate",
          "train/examples_per_sec", "train/step_time"} <= set(train_records[0])


def last_loss_per_step(model_dir):
  out = {}
  for line in open(model_dir / "metrics.jsonl"):
    record = json.loads(line)
    if "train/loss" in record:
      out[record["step"]] = record["train/loss"]
  return out


def kill_and_resume_equals_straight(tmp_path, cmd):
  """Runs `cmd` straight; runs it again, SIGKILLs it (no chance to save) once its first
  checkpoint is complete, restarts it; the per-step losses must be the straight run's."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"
  subprocess.run(cmd + [f"--gin.MODEL_DIR='{straight_dir}'"], check=True, env=env,
                 capture_output=True, timeout=600, cwd=os.getcwd())
  proc = subprocess.Popen(cmd + [f"--gin.MODEL_DIR='{killed_dir}'"], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  first = killed_dir / "checkpoints" / str(STEPS // 2)
  deadline = time.time() + 600
  while not (first / "_CHECKPOINT_METADATA").exists() and proc.poll() is None:
    assert time.time() < deadline
    time.sleep(0.05)
  proc.kill()
  proc.wait()
  subprocess.run(cmd + [f"--gin.MODEL_DIR='{killed_dir}'"], check=True, env=env,
                 capture_output=True, timeout=600)
  resumed = last_loss_per_step(killed_dir)
  assert sorted(resumed) == list(range(1, STEPS + 1))
  assert resumed == last_loss_per_step(straight_dir)


@pytest.mark.slow
def test_killed_process_resumes_from_its_last_checkpoint(tmp_path):
  """The shapes mixture (generated data)."""
  cmd = [sys.executable, "-m", "kosmos_jax.train", "--gin_file=experiments/shapes_tiny.gin"]
  kill_and_resume_equals_straight(tmp_path, cmd + [f"--gin.{o}" for o in OVERRIDES])


def test_killed_run_on_a_webdataset_task_resumes_exactly(tmp_path):
  """Image-caption pairs read from WebDataset tars (img2dataset's layout): the data position of
  a file-based source, shuffle buffer and packing included, survives SIGKILL."""
  from tests.data import layouts   # pylint: disable=g-import-not-at-top
  layouts.shapes_caption_shards(str(tmp_path / "shards"), num_shards=3, count=300)
  data_gin = tmp_path / "wds.gin"
  data_gin.write_text(f"""
from kosmos_jax.data import sources
from kosmos_jax.data import tasks
wds/webdataset_source.split_to_filepattern = {{'train': '{tmp_path}/shards/*.tar'}}
wds/webdataset_source.shuffle_buffer_size = 64
wds/image_text_task.name = 'wds_shapes_captions'
wds/image_text_task.source = @wds/webdataset_source()
wds/image_text_task.vocabulary = @ShapesVocabulary()
wds/image_text_task.image_size = 32
MIXTURE_OR_TASK_NAME = @wds/image_text_task()
""")
  cmd = [sys.executable, "-m", "kosmos_jax.train", "--gin_file=experiments/shapes_tiny.gin",
         f"--gin_file={data_gin}"]
  kill_and_resume_equals_straight(tmp_path, cmd + [f"--gin.{o}" for o in OVERRIDES])


def test_checkpoint_from_8_devices_restores_on_4(tmp_path):
  config = tiny.tiny_config()
  opt = optimizers.OptimizerConfig(learning_rate=1e-3, warmup_steps=1)
  mesh8 = partitioning.make_mesh(partitioning.MeshConfig(data=2, fsdp=2, tensor=2))
  trainer8 = trainer_lib.Trainer(config, opt, trainer_lib.TrainerConfig(total_steps=4), mesh8,
                                 "fsdp_tp")
  state = trainer8.init_state()
  saver = checkpointer_lib.Checkpointer(str(tmp_path), async_save=False)
  saver.save(1, state, force=True)
  saver.close()

  mesh4 = partitioning.make_mesh(partitioning.MeshConfig(data=2, fsdp=2), jax.devices()[:4])
  trainer4 = trainer_lib.Trainer(config, opt, trainer_lib.TrainerConfig(total_steps=4), mesh4,
                                 "fsdp")
  loader = checkpointer_lib.Checkpointer(str(tmp_path))
  assert loader.latest_step() == 1
  restored = loader.restore(1, trainer4.factory.abstract_with_shardings())
  for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(state)),
                  jax.tree_util.tree_leaves(jax.device_get(restored))):
    np.testing.assert_array_equal(a, b)
  kernel = restored.params["text"]["layers"]["self_attn"]["q_proj"]["kernel"]
  assert len(kernel.sharding.device_set) == 4
  assert kernel.sharding.spec == trainer4.factory.shardings.params["text"]["layers"]["self_attn"][
      "q_proj"]["kernel"].spec
  assert kernel.sharding.spec != state.params["text"]["layers"]["self_attn"]["q_proj"][
      "kernel"].sharding.spec


def test_a_relative_model_dir_trains_checkpoints_resumes_and_serves(tmp_path, monkeypatch):
  """MODEL_DIR='run' (relative, as a new user writes it): the first checkpoint saves, a rerun
  resumes from it, and eval / inference load the run by the same relative path."""
  monkeypatch.chdir(tmp_path)
  first = run_training("run", [f"TRAIN_STEPS={STEPS // 2}"]).summary
  assert first["final_step"] == STEPS // 2
  second = run_training("run").summary
  assert min(second["losses"]) == STEPS // 2 + 1 and second["final_step"] == STEPS
  from kosmos_jax.inference import model_loading  # pylint: disable=g-import-not-at-top
  _, _, _, _, what = model_loading.load_for_inference("run")
  assert what == f"training run {tmp_path / 'run'}"
  from kosmos_jax import eval as eval_script  # pylint: disable=g-import-not-at-top
  done = eval_script.evaluate(checkpoint="run", output_dir="run/eval", num_examples=4,
                              batch_size=4, tasks=[("shapes_eval_vqa", "test")])
  assert list(done) == [STEPS] and (tmp_path / "run" / "eval" / "report_6.html").exists()


def test_an_unwritable_model_dir_fails_before_any_step(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(PermissionError, match=r"MODEL_DIR .*file/run.* cannot be written"):
    run_training(str(blocker / "run"))
