"""Every shipped gin file parses; gin errors name the file or binding; the paper experiment
builds and lowers its train step from shapes alone (no 1.6 B parameters allocated)."""
import glob
import os
import subprocess
import sys

import gin
import pytest

from kosmos_jax import gin_utils

GIN_DIR = gin_utils.PACKAGE_GIN_DIR
GIN_FILES = sorted(os.path.relpath(p, GIN_DIR)
                   for p in glob.glob(os.path.join(GIN_DIR, "**", "*.gin"), recursive=True))
# Values for every %gin.REQUIRED macro a shipped file declares.
REQUIRED = ["MODEL_DIR='/tmp/kosmos_gin_test'", "MIXTURE_OR_TASK_NAME='shapes_captions'",
            "TASK_FEATURE_LENGTHS={'targets': 64, 'images': 2}", "TRAIN_STEPS=10", "BATCH_SIZE=8",
            "TEXT_TASK='shapes_text'", "CAPTION_TASK='shapes_captions'",
            "INTERLEAVED_TASK='shapes_interleaved'", "INSTRUCTION_TASK='shapes_vqa'",
            "INIT_CHECKPOINT_DIR='/tmp/kosmos_gin_init'", "CHECKPOINT_DIR='/tmp/kosmos_ckpt'",
            "EVAL_OUTPUT_DIR='/tmp/kosmos_eval'", "EVAL_TASKS=[('shapes_eval_vqa', 'test')]",
            # gin/evals/*.gin: local roots of the official benchmark files
            "COCO_KARPATHY_JSON='/tmp/kosmos_evals/dataset_coco.json'",
            "COCO_IMAGE_ROOT='/tmp/kosmos_evals/coco'",
            "FLICKR30K_KARPATHY_JSON='/tmp/kosmos_evals/dataset_flickr30k.json'",
            "FLICKR30K_IMAGE_ROOT='/tmp/kosmos_evals/flickr30k'", "VQAV2_ROOT='/tmp/kosmos_evals/vqav2'",
            "VIZWIZ_ROOT='/tmp/kosmos_evals/vizwiz'",
            "HATEFUL_MEMES_ROOT='/tmp/kosmos_evals/hateful_memes'",
            "RENDERED_SST2_ROOT='/tmp/kosmos_evals/rendered_sst2'",
            "IMAGENET_ROOT='/tmp/kosmos_evals/imagenet'",
            "IMAGENET_CLASS_NAMES='/tmp/kosmos_evals/LOC_synset_mapping.txt'",
            "HELLASWAG_ROOT='/tmp/kosmos_evals/hellaswag'", "PIQA_ROOT='/tmp/kosmos_evals/piqa'",
            "COPA_ROOT='/tmp/kosmos_evals/copa'", "BOOLQ_ROOT='/tmp/kosmos_evals/boolq'",
            "CB_ROOT='/tmp/kosmos_evals/cb'", "STORYCLOZE_ROOT='/tmp/kosmos_evals/storycloze'",
            "WINOGRANDE_ROOT='/tmp/kosmos_evals/winogrande'",
            # gin/data/*.gin: where each layout's files are
            "SPM_MODEL='/tmp/kosmos_data/spm.model'", "WEBDATASET_FILES='/tmp/kosmos_data/*.tar'",
            "PARQUET_FILES='/tmp/kosmos_data/*.parquet'", "MMC4_FILES='/tmp/kosmos_data/*.zip'",
            "MMC4_IMAGE_DIR='/tmp/kosmos_data/images'", "MMC4_TAR_FILES='/tmp/kosmos_data/*.tar'",
            "TFDS_NAME='coco_captions'", "TEXT_FILES='/tmp/kosmos_data/*.txt.gz'",
            "JSONL_FILES='/tmp/kosmos_data/*.jsonl'"]


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_there_are_gin_files():
  assert {"runs/pretrain.gin", "runs/finetune.gin", "models/tiny.gin",
          "models/kosmos1_1p6b.gin", "experiments/kosmos1_pretrain.gin",
          "experiments/kosmos1_instruct.gin"} <= set(GIN_FILES)


@pytest.mark.parametrize("name", GIN_FILES)
def test_gin_file_parses(name):
  model_gin = [] if name.startswith(("models/", "experiments/")) else ["models/tiny.gin"]
  gin_utils.parse(model_gin + [name], REQUIRED, finalize=True)


def test_missing_required_macro_is_reported_with_its_name():
  with pytest.raises(ValueError, match="MODEL_DIR.*gin.REQUIRED"):
    gin_utils.parse(["models/tiny.gin", "runs/pretrain.gin"], REQUIRED[1:], finalize=True)


def test_gin_errors_name_the_file_and_the_binding(tmp_path):
  bad = tmp_path / "bad.gin"
  bad.write_text("from __gin__ import dynamic_registration\n"
                 "from kosmos_jax import trainer\n"
                 "trainer.TrainerConfig.totl_steps = 3\n")
  with pytest.raises(ValueError, match=r"bad\.gin.*totl_steps"):
    gin_utils.parse([str(bad)], [])
  with pytest.raises(ValueError, match="gin binding 'NOT VALID"):
    gin_utils.parse([], ["NOT VALID ="])


def test_gin_overrides_on_the_command_line():
  rest, bindings = gin_utils.split_gin_overrides(
      ["prog", "--gin_file=a.gin", "--gin.TRAIN_STEPS=5", "--gin.trainer.TrainerConfig.log_every=2"])
  assert rest == ["prog", "--gin_file=a.gin"]
  assert bindings == ["TRAIN_STEPS=5", "trainer.TrainerConfig.log_every=2"]


def test_paper_experiment_lowers_abstractly(tmp_path):
  task_names = [b for b in REQUIRED if b.split("=")[0].endswith("_TASK")]
  gin_utils.parse(["experiments/kosmos1_pretrain.gin"],
                  task_names + [f"MODEL_DIR='{tmp_path}'", "train_script.train.abstract_only=True"])
  from kosmos_jax import train as train_script
  result = gin.get_configurable(train_script.train)()
  out = result.abstract
  state = out.state
  n_params = sum(x.size for x in __import__("jax").tree_util.tree_leaves(state.params))
  assert n_params == 1_662_375_936
  batch = out.batch["decoder_input_tokens"]
  assert batch.shape == (576, 2048)          # 1.18 M tokens per step
  assert result.trainer.model_config.dtype == "bfloat16"
  text = out.lowered.as_text()
  assert "stablehlo" in text or "func.func" in text
  partitioning = (tmp_path / "partitioning.txt").read_text()
  assert "fsdp" in partitioning and "MiB per device" in partitioning


def test_a_config_gin_saved_before_the_package_move_still_parses():
  """Runs saved `from kosmos_jax import trainer` (etc.) before training/ existed; the thin
  alias modules keep such config.gin files usable."""
  fixture = os.path.join(os.path.dirname(__file__), "fixtures", "config_gin_before_packages.gin")
  script = ("import gin; from kosmos_jax import gin_utils; gin_utils.parse([%r], []); "
            "from kosmos_jax.training import trainer; "
            "c = gin.get_configurable(trainer.TrainerConfig)(); print(c.total_steps, c.log_every)"
            % fixture)
  # A fresh process: other tests reload kosmos_jax.data.tasks, which gin would see as a clash.
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split()[-2:] == ["2", "200"]
