"""Every launcher's --dry_run: the printed commands carry the right flags (workers, coordinator,
process ids 0..N-1, gin file and overrides) and nothing needs gcloud, sbatch or srun."""
import os
import shlex
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN = "experiments/kosmos1_pretrain.gin"
OVERRIDE = "--gin.TEXT_TASK='my_text'"


def _dry_run(script, *args, env=None):
  """The printed commands, each split like the shell would (comment lines dropped)."""
  out = subprocess.run(["bash", os.path.join(ROOT, "launch", script), *args],
                       capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"),
                            **(env or {})})
  assert out.returncode == 0, out.stderr
  return [shlex.split(line) for line in out.stdout.splitlines()
          if line.strip() and not line.startswith("#")]


def _flag(argv, name):
  values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
  assert len(values) == 1, (name, argv)
  return values[0]


def _train_argv(argv):
  """The `python -m kosmos_jax.train ...` part of a command line."""
  start = argv.index("-m")
  assert argv[start + 1] == "kosmos_jax.train"
  return argv[start + 1:]


def test_local_multiprocess_dry_run():
  commands = _dry_run("local_multiprocess.sh", "--dry_run", "--num_processes=3",
                      "--devices_per_process=4", "--port=23456", "experiments/shapes_tiny.gin",
                      "/tmp/mp", "--gin.TRAIN_STEPS=3")
  assert len(commands) == 3
  for i, argv in enumerate(commands):
    assert "XLA_FLAGS=--xla_force_host_platform_device_count=4" in argv
    assert "JAX_PLATFORMS=cpu" in argv
    train = _train_argv(argv)
    assert "--multiprocess" in train
    assert _flag(train, "coordinator_address") == "127.0.0.1:23456"
    assert _flag(train, "num_processes") == "3"
    assert _flag(train, "process_id") == str(i)
    assert _flag(train, "gin_file") == "experiments/shapes_tiny.gin"
    assert _flag(train, "gin.MODEL_DIR") == "'/tmp/mp'"
    assert train[-1] == "--gin.TRAIN_STEPS=3"


def test_local_multiprocess_rejects_a_bad_count():
  out = subprocess.run(["bash", os.path.join(ROOT, "launch", "local_multiprocess.sh"),
                        "--dry_run", "--num_processes=0", "a.gin", "/tmp/x"],
                       capture_output=True, text=True, timeout=60)
  assert out.returncode == 2 and out.stderr.startswith("error: "), out.stderr


@pytest.mark.parametrize("queued", [False, True])
def test_tpu_vm_dry_run(queued):
  options = ["--create", "--delete", "--dry_run"] + (["--queued"] if queued else [])
  env = {"TPU_NAME": "k1", "ZONE": "us-east5-a", "ACCELERATOR_TYPE": "v5p-64",
         "PROJECT": "my-proj"}
  commands = _dry_run("tpu_vm.sh", *options, GIN, "gs://bucket/k1", OVERRIDE, env=env)
  gcloud = [c for c in commands if c[0] == "gcloud"]
  assert all("--zone=us-east5-a" in c and "--project=my-proj" in c for c in gcloud)
  kinds = [" ".join(c[3:5]) for c in gcloud]
  if queued:
    assert kinds[0] == "queued-resources create" and "--accelerator-type=v5p-64" in gcloud[0]
    assert kinds[-1] == "queued-resources delete"
  else:
    assert kinds[0] == "tpu-vm create" and "--accelerator-type=v5p-64" in gcloud[0]
    assert kinds[-1] == "tpu-vm delete"
  scp = next(c for c in gcloud if c[4] == "scp")
  assert "--worker=all" in scp
  ssh = [c for c in gcloud if c[4] == "ssh"]
  start, follow = ssh
  assert "--worker=all" in start and "--worker=0" in follow
  remote = start[start.index("--command") + 1]
  assert ".[tpu]" in remote
  train = _train_argv(shlex.split(remote.split("nohup", 1)[1].split(">")[0]))
  assert "--multiprocess" in train and _flag(train, "gin_file") == GIN
  assert _flag(train, "gin.MODEL_DIR") == "'gs://bucket/k1'" and train[-1] == OVERRIDE
  assert "train.log" in follow[follow.index("--command") + 1]


def test_tpu_vm_without_create_reuses_the_vm():
  commands = _dry_run("tpu_vm.sh", "--dry_run", GIN, "gs://b/k1",
                      env={"TPU_NAME": "k1", "ZONE": "z"})
  assert not any("create" in c or "delete" in c for c in commands)


def test_slurm_dry_run():
  env = {"SLURM_JOB_NODELIST": "gpu[03-04,09]", "SLURM_NTASKS": "24",
         "SLURM_NTASKS_PER_NODE": "8(x3)", "SLURM_JOB_ID": "1234"}
  commands = _dry_run("slurm_gpu.sbatch", "--dry_run", GIN, "/scratch/k1", OVERRIDE, env=env)
  srun, tasks = commands[0], commands[1:]
  assert srun[0] == "srun" and "--kill-on-bad-exit=1" in srun
  assert "$SLURM_PROCID" in srun[srun.index("-c") + 1]
  assert len(tasks) == 24
  for i, argv in enumerate(tasks):
    train = _train_argv(argv)
    assert _flag(train, "coordinator_address") == "gpu03:21234"
    assert _flag(train, "num_processes") == "24"
    assert _flag(train, "process_id") == str(i)
    assert f"CUDA_VISIBLE_DEVICES={i % 8}" in argv
    assert OVERRIDE in train and _flag(train, "gin_file") == GIN


@pytest.mark.parametrize("nodelist, host", [("node1", "node1"), ("a,b", "a"),
                                            ("gpu-[7,9-10]", "gpu-7")])
def test_slurm_first_host(nodelist, host):
  commands = _dry_run("slurm_gpu.sbatch", "--dry_run", GIN, "/s",
                      env={"SLURM_JOB_NODELIST": nodelist, "SLURM_NTASKS": "1"})
  assert _flag(_train_argv(commands[1]), "coordinator_address").split(":")[0] == host


def test_local_sh_still_builds_the_train_command(tmp_path):
  fake = tmp_path / "python"
  fake.write_text("#!/bin/sh\nprintf '%s\\n' \"$@\"\n")
  fake.chmod(0o755)
  out = subprocess.run(["bash", os.path.join(ROOT, "launch", "local.sh"),
                        "experiments/shapes_tiny.gin", "/tmp/s", "--gin.TRAIN_STEPS=2"],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHON": str(fake)})
  assert out.returncode == 0, out.stderr
  assert out.stdout.split("\n")[:5] == ["-m", "kosmos_jax.train",
                                        "--gin_file=experiments/shapes_tiny.gin",
                                        "--gin.MODEL_DIR='/tmp/s'", "--gin.TRAIN_STEPS=2"]
