"""A real multi-process run: 2 processes x 4 virtual CPU devices on localhost train the tiny
model and match 1 process x 8 devices; the 2-process checkpoint then resumes on 1 x 8 (per-step
losses equal to the straight run's to float rounding: oneDNN's CPU kernels, where in use, differ
in the last bit across process layouts). Another device count: tests/training/test_resume.py.
The data position lives in virtual data shards, so it does not depend on the host layout
(kosmos_jax/data/sharded_iterator.py)."""
import json
import os
import shutil
import socket
import subprocess
import sys
import threading

import numpy as np

STEPS = 4
OVERRIDES = ["MODEL_OVERRIDES={'text.vocab_size': 128, 'connector.num_latents': 8}",
             "TASK_FEATURE_LENGTHS={'targets': 64, 'images': 4}", "BATCH_SIZE=8",
             f"TRAIN_STEPS={STEPS}", "EVAL_DATASETS=[]", "trainer.TrainerConfig.log_every=1",
             f"trainer.TrainerConfig.checkpoint_every={STEPS // 2}",
             "trainer.TrainerConfig.async_checkpoints=False",
             "optimizers.OptimizerConfig.warmup_steps=2",
             "NUM_DATA_SHARDS=4"]


def _command(model_dir, *extra):
  cmd = [sys.executable, "-m", "kosmos_jax.train", "--gin_file=experiments/shapes_tiny.gin",
         f"--gin.MODEL_DIR='{model_dir}'"] + [f"--gin.{o}" for o in OVERRIDES]
  return cmd + list(extra)


def _env(devices):
  return dict(os.environ, JAX_PLATFORMS="cpu",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def train_single(model_dir, devices):
  result = subprocess.run(_command(model_dir), env=_env(devices), capture_output=True, text=True,
                          timeout=900, cwd=os.getcwd())
  assert result.returncode == 0, result.stderr[-3000:]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def two_processes(command):
  """Runs `command + multi-process flags` as processes 0 and 1 (4 CPU devices each)."""
  port = _free_port()
  procs = [subprocess.Popen(
      command + ["--multiprocess", f"--coordinator_address=127.0.0.1:{port}",
                 "--num_processes=2", f"--process_id={i}"],
      env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outputs = [p.communicate(timeout=900) for p in procs]
  # Every failed process's tail: the one that failed first is often not process 0 (which then
  # only reports a collective timing out while waiting for it).
  failures = [f"process {i}: {err[-3000:]}" for i, (p, (_, err)) in enumerate(zip(procs, outputs))
              if p.returncode != 0]
  assert not failures, "\n".join(failures)
  return outputs


def losses(model_dir):
  out = {}
  for line in open(os.path.join(model_dir, "metrics.jsonl")):
    record = json.loads(line)
    if "train/loss" in record:
      out[record["step"]] = record["train/loss"]
  return out


def params(model_dir, step):
  """The params of checkpoint `step`, read onto one CPU device whatever mesh wrote them."""
  import jax
  import orbax.checkpoint as ocp
  path = os.path.join(model_dir, "checkpoints", str(step), "state")
  checkpointer = ocp.StandardCheckpointer()
  metadata = checkpointer.metadata(path)
  metadata = getattr(metadata, "item_metadata", metadata)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
  restored = checkpointer.restore(path, target)["params"]
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(restored)]


def resume_from(source_dir, step, target_dir, devices):
  """Copies a run, keeps only its checkpoint `step`, and trains it to the end on `devices`."""
  shutil.copytree(source_dir, target_dir)
  for name in os.listdir(os.path.join(target_dir, "checkpoints")):
    if name.isdigit() and int(name) > step:
      shutil.rmtree(os.path.join(target_dir, "checkpoints", name))
  train_single(target_dir, devices)
  return losses(target_dir)


def test_two_processes_match_one_and_resume_on_one_host(tmp_path):
  single, multi = str(tmp_path / "one_by_8"), str(tmp_path / "two_by_4")
  train_single(single, 8)
  two_processes(_command(multi))
  straight, two = losses(single), losses(multi)
  assert sorted(straight) == sorted(two) == list(range(1, STEPS + 1))
  for step in straight:
    np.testing.assert_allclose(two[step], straight[step], rtol=1e-6, err_msg=str(step))
  for a, b in zip(params(single, STEPS), params(multi, STEPS)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

  half = STEPS // 2
  on_8 = resume_from(multi, half, str(tmp_path / "resumed_on_1x8"), 8)
  for step in range(half + 1, STEPS + 1):
    # Same global batch, same mesh shape: equal up to float rounding, because oneDNN's CPU
    # kernels (where in use) are not bit-identical across process layouts (bit for bit with
    # KOSMOS_JAX_CPU_ONEDNN=0, kosmos_jax/training/xla_cpu.py).
    np.testing.assert_allclose(on_8[step], two[step], rtol=1e-6, err_msg=str(step))

  # Evaluation runs multi-process too: each process on its own devices, process 0 writes.
  eval_dir = tmp_path / "eval"
  outputs = two_processes([sys.executable, "-m", "kosmos_jax.eval", "--gin_file=runs/eval.gin",
                           f"--gin.CHECKPOINT_DIR='{single}'", f"--gin.EVAL_OUTPUT_DIR='{eval_dir}'",
                           "--gin.EVAL_TASKS=[('shapes_eval_vqa', 'test')]",
                           "--gin.eval_script.evaluate.num_examples=8"])
  assert "report:" in outputs[0][0] and "report:" not in outputs[1][0]
  assert len(open(eval_dir / "metrics.jsonl").readlines()) == 1


def test_run_files_are_replaced_whole_never_seen_half_written(tmp_path, monkeypatch):
  """Process 1 reads train_summary.json while process 0 writes it (a CI failure: 'Expecting
  value' from an empty file): until the new text is complete, readers must see the old file."""
  from kosmos_jax import train as train_script  # pylint: disable=g-import-not-at-top
  summary_path = tmp_path / "train_summary.json"
  summary_path.write_text(json.dumps({"eval_start": {"task": {"loss": 1.0}}, "losses": {}}))
  seen_at_rename = []
  real_replace = os.replace

  def watching_replace(source, target):
    seen_at_rename.append((json.loads(summary_path.read_text()), json.loads(open(source).read())))
    real_replace(source, target)

  monkeypatch.setattr(os, "replace", watching_replace)
  train_script._write_summary(str(tmp_path), {"losses": {4: 0.5}})  # pylint: disable=protected-access
  (old, new), = seen_at_rename
  assert old == {"eval_start": {"task": {"loss": 1.0}}, "losses": {}}
  assert new == json.loads(summary_path.read_text())
  assert new == {"eval_start": {"task": {"loss": 1.0}}, "losses": {"4": 0.5}}
  assert sorted(p.name for p in tmp_path.iterdir()) == ["train_summary.json"]


def test_processes_checking_one_model_dir_at_once_do_not_trip_each_other(tmp_path):
  """Every process of a run probes MODEL_DIR before its first step; with one shared probe name,
  one process removed the other's probe and reported the directory as unwritable."""
  from kosmos_jax.checkpointing import run_dir  # pylint: disable=g-import-not-at-top
  workers, rounds = 8, 200
  start = threading.Barrier(workers)
  errors = []

  def probe_many():
    start.wait()
    for _ in range(rounds):
      try:
        run_dir.check_writable(str(tmp_path))
      except PermissionError as e:
        errors.append(str(e))

  threads = [threading.Thread(target=probe_many) for _ in range(workers)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors, errors[:3]
  assert not list(tmp_path.iterdir())
