"""gin/evals/*.gin parse with dummy paths and register every paper benchmark without reading a
file; building a dataset then fails naming the path and the gin macro to set."""
import gin
import pytest
import seqio

from kosmos_jax.evaluation import readers as eval_readers
from kosmos_jax.evaluation import tasks as eval_tasks
from kosmos_jax import gin_utils
from kosmos_jax.evaluation.readers import common

MACROS = sorted(common.path_macros())
GROUPS = {"evals/captions.gin": "CAPTION_EVAL_TASKS", "evals/vqa.gin": "VQA_EVAL_TASKS",
          "evals/ocr_free.gin": "OCR_FREE_EVAL_TASKS", "evals/imagenet.gin": "IMAGENET_EVAL_TASKS",
          "evals/language.gin": "LANGUAGE_EVAL_TASKS"}
# The path argument each task reports first when its folder is missing.
FIRST_MACRO = {
    "coco_karpathy_captions": "COCO_KARPATHY_JSON",
    "flickr30k_karpathy_captions": "FLICKR30K_KARPATHY_JSON",
    "vqav2": "VQAV2_ROOT", "vizwiz": "VIZWIZ_ROOT", "hateful_memes": "HATEFUL_MEMES_ROOT",
    "rendered_sst2": "RENDERED_SST2_ROOT", "rendered_sst2_cot": "RENDERED_SST2_ROOT",
    "imagenet_constrained": "IMAGENET_ROOT", "imagenet_unconstrained": "IMAGENET_ROOT",
    "hellaswag": "HELLASWAG_ROOT", "piqa": "PIQA_ROOT", "copa": "COPA_ROOT",
    "boolq": "BOOLQ_ROOT", "cb": "CB_ROOT", "storycloze": "STORYCLOZE_ROOT",
    "winogrande": "WINOGRANDE_ROOT"}


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _dummy_bindings(tmp_path):
  return [f"{m}='{tmp_path / 'absent' / m.lower()}'" for m in MACROS]


def _evaluate(macro):
  """Calls the configurables in a macro's list of (task, split) pairs (what the eval entry
  point's binding would do)."""
  return [(ref.scoped_configurable_fn(), split)
          for ref, split in gin.query_parameter(f"{macro}/macro.value")]


def test_path_macros_are_read_from_the_gin_files():
  assert common.path_macros()["VQAV2_ROOT"] == "vqa.gin"
  assert common.path_macros()["HATEFUL_MEMES_ROOT"] == "ocr_free.gin"
  assert len(common.path_macros()) == 17 and set(FIRST_MACRO.values()) <= set(common.path_macros())


def test_paper_benchmarks_register_lazily_and_name_the_macro(tmp_path):
  gin_utils.parse(["evals/paper_benchmarks.gin"], _dummy_bindings(tmp_path))
  tasks = _evaluate("PAPER_EVAL_TASKS")
  assert dict(tasks) == eval_readers.PAPER_SPLITS          # every benchmark, the paper's split
  assert set(eval_tasks.registered()) >= set(eval_readers.PAPER_SPLITS)
  assert eval_tasks.get_spec("imagenet_constrained").constrained
  assert not eval_tasks.get_spec("imagenet_unconstrained").constrained
  assert eval_tasks.get_spec("rendered_sst2_cot").rationale_prompt
  for task, split in tasks:
    macro = FIRST_MACRO[task]
    with pytest.raises(FileNotFoundError, match=f"absent/{macro.lower()}.*does not exist.*"
                       f"set the gin macro {macro} .*gin/evals/{common.path_macros()[macro]}"):
      seqio.get_mixture_or_task(task).get_dataset(split=split, sequence_length=None,
                                                  shuffle=False)


@pytest.mark.parametrize("name", sorted(GROUPS))
def test_each_group_file_parses_alone(tmp_path, name):
  gin_utils.parse([name], _dummy_bindings(tmp_path))
  tasks = _evaluate(GROUPS[name])
  assert tasks and all(eval_readers.PAPER_SPLITS[t] == s for t, s in tasks)


def test_a_forgotten_path_macro_is_named(tmp_path):
  bindings = [b for b in _dummy_bindings(tmp_path) if not b.startswith("HATEFUL_MEMES_ROOT=")]
  with pytest.raises(ValueError, match="HATEFUL_MEMES_ROOT.*gin.REQUIRED"):
    gin_utils.parse(["evals/paper_benchmarks.gin"], bindings)


def test_image_size_and_spec_overrides_from_gin(tmp_path):
  gin_utils.parse(["evals/ocr_free.gin"], _dummy_bindings(tmp_path) + [
      "EVAL_IMAGE_SIZE = 336",
      "readers.hateful_memes.spec_overrides = {'score_normalization': 'sum'}"])
  _evaluate("OCR_FREE_EVAL_TASKS")
  assert eval_tasks.get_spec("hateful_memes").score_normalization == "sum"
  standardize = seqio.get_mixture_or_task("hateful_memes").preprocessors[-1]
  assert standardize.keywords["image_size"] == 336
  with pytest.raises(ValueError, match="unknown EvalSpec fields.*'beams'"):
    eval_readers.hateful_memes("/x", spec_overrides={"beams": 3})
