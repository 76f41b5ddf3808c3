"""A user's mistake is one line on stderr naming the cause, exit status 2, no traceback."""
import subprocess
import sys

import pytest

TRAIN = [sys.executable, "-m", "kosmos_jax.train"]
SHAPES = "--gin_file=experiments/shapes_tiny.gin"
CASES = {
    "unknown gin file": (TRAIN + ["--gin_file=experiments/shapes_tiyn.gin"],
                         r"gin file 'experiments/shapes_tiyn.gin' not found.*shapes_tiny.gin"),
    "malformed binding": (TRAIN + [SHAPES, "--gin.MODEL_DIR=runs/x"],
                          r"gin binding 'MODEL_DIR=runs/x'.*--gin.MODEL_DIR=\"'runs/x'\""),
    "required macro": (TRAIN + [SHAPES], r"gin macro MODEL_DIR is required.*--gin.MODEL_DIR="),
    "override without value": (TRAIN + [SHAPES, "--gin.MODEL_DIR"], r"--gin.NAME=VALUE"),
    "unknown task": (TRAIN + [SHAPES, "--gin.MODEL_DIR='{tmp}/run'",
                              "--gin.MIXTURE_OR_TASK_NAME='shapes_captoins'"],
                     r"no SeqIO task or mixture named 'shapes_captoins'.*shapes_captions"),
    "batch vs mesh": (TRAIN + [SHAPES, "--gin.MODEL_DIR='{tmp}/run'", "--gin.BATCH_SIZE=7",
                               "--gin.partitioning.MeshConfig.data=2"],
                      r"Global batch 7 .*divisible by data x fsdp = 2"),
    "missing checkpoint dir": ([sys.executable, "-m", "kosmos_jax.eval",
                                "--gin_file=runs/eval.gin", "--gin.CHECKPOINT_DIR='no_such_run'",
                                "--gin.EVAL_OUTPUT_DIR='{tmp}/eval'",
                                "--gin.EVAL_TASKS=[('shapes_eval_vqa', 'test')]"],
                               r"CHECKPOINT_DIR '.*no_such_run' is not a directory"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_user_error_is_one_line(case, tmp_path):
  import re  # pylint: disable=g-import-not-at-top
  cmd, expected = CASES[case]
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([a.replace("{tmp}", str(tmp_path)) for a in cmd], capture_output=True,
                       text=True, timeout=300, env={**__import__("os").environ, **env})
  assert out.returncode == 2, out.stderr[-3000:]
  assert "Traceback" not in out.stderr, out.stderr[-3000:]
  errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1, out.stderr[-3000:]
  assert re.search(expected, errors[0]), errors[0]


HELP = {"kosmos_jax.train": "--gin_file", "kosmos_jax.eval": "--gin_file",
        "kosmos_jax.infer": "--input_jsonl", "kosmos_jax.demo": "--model_dir",
        "kosmos_jax.convert.hf_kosmos2": "--hf_dir", "kosmos_jax.data.vocab": "--vocab_size",
        "kosmos_jax.models.summary": "--model"}


@pytest.mark.parametrize("module", sorted(HELP))
def test_help_lists_the_flags(module):
  out = subprocess.run([sys.executable, "-m", module, "--helpshort"], capture_output=True,
                       text=True, timeout=300)
  text = out.stdout + out.stderr
  assert out.returncode in (0, 1) and HELP[module] in text, text[-2000:]
