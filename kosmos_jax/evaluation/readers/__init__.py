"""Readers of the official data formats of the Kosmos-1 benchmarks, registered as eval tasks.

Each function below reads one benchmark from a local folder in the layout its authors release,
registers it with `kosmos_jax.evaluation.tasks.add_eval_task` (prompts, decoding and metrics as in
docs/evaluation.md §4-5) and returns the task name. Registration reads nothing: the files are
parsed when a split's dataset is built, so `gin/evals/*.gin` can name every benchmark
(`%gin.REQUIRED` path macros) on machines that hold only some. A missing folder raises an error
naming the path and the gin macro to set; unusable records are skipped, counted
(`skipped_records(task)`, `preprocessors.record_counts()`) and logged.

  from kosmos_jax.evaluation import readers as eval_readers
  task = eval_readers.hateful_memes("/data/hateful_memes")          # -> "hateful_memes"
  ds = seqio.get_mixture_or_task(task).get_dataset(
      split="validation", sequence_length=None, shuffle=False)

Images: coco_karpathy_captions, flickr30k_karpathy_captions, vqav2, vizwiz, hateful_memes,
rendered_sst2, rendered_sst2_cot, imagenet (constrained or not). Text: hellaswag, piqa, copa,
boolq, cb, storycloze, winogrande. `PAPER_SPLITS` says which split each task's paper number is
on (or the closest split with public answers).
"""
from kosmos_jax.evaluation.readers.common import skipped_records
from kosmos_jax.evaluation.readers.language import boolq
from kosmos_jax.evaluation.readers.language import cb
from kosmos_jax.evaluation.readers.language import copa
from kosmos_jax.evaluation.readers.language import hellaswag
from kosmos_jax.evaluation.readers.language import piqa
from kosmos_jax.evaluation.readers.language import storycloze
from kosmos_jax.evaluation.readers.language import winogrande
from kosmos_jax.evaluation.readers.vision import coco_karpathy_captions
from kosmos_jax.evaluation.readers.vision import flickr30k_karpathy_captions
from kosmos_jax.evaluation.readers.vision import hateful_memes
from kosmos_jax.evaluation.readers.vision import imagenet
from kosmos_jax.evaluation.readers.vision import read_class_names
from kosmos_jax.evaluation.readers.vision import rendered_sst2
from kosmos_jax.evaluation.readers.vision import rendered_sst2_cot
from kosmos_jax.evaluation.readers.vision import vizwiz
from kosmos_jax.evaluation.readers.vision import vqav2

# Default task name -> the split the paper reports. VQAv2 / VizWiz: the paper uses test-dev,
# whose answers only the evaluation servers have; validation is the local stand-in.
PAPER_SPLITS = {
    "coco_karpathy_captions": "test",
    "flickr30k_karpathy_captions": "test",
    "vqav2": "validation",
    "vizwiz": "validation",
    "hateful_memes": "validation",
    "rendered_sst2": "test",
    "rendered_sst2_cot": "test",
    "imagenet_constrained": "validation",
    "imagenet_unconstrained": "validation",
    "hellaswag": "validation",
    "piqa": "validation",
    "copa": "validation",
    "boolq": "validation",
    "cb": "validation",
    "storycloze": "test",
    "winogrande": "validation",
}

__all__ = ["PAPER_SPLITS", "boolq", "cb", "coco_karpathy_captions", "copa",
           "flickr30k_karpathy_captions", "hateful_memes", "hellaswag", "imagenet", "piqa",
           "read_class_names", "rendered_sst2", "rendered_sst2_cot", "skipped_records",
           "storycloze", "vizwiz", "vqav2", "winogrande"]
