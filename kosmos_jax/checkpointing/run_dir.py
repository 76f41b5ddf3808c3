"""What a training run directory (MODEL_DIR) holds, by name, and its vocabulary.

  MODEL_DIR/checkpoints/<step>/   Orbax: train state, data position, config (`checkpointer`)
  MODEL_DIR/model_config.json     the model config (as in a weights-only checkpoint)
  MODEL_DIR/config.gin            the operative gin config
  MODEL_DIR/partitioning.txt      mesh, rules and every array's sharding
  MODEL_DIR/metrics.jsonl         one JSON object per logged step
  MODEL_DIR/train_summary.json    written when training ends (eval watchers stop on it)
  MODEL_DIR/vocab/                the SentencePiece model and Kosmos id layout, for infer/eval
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Optional

from kosmos_jax import paths
from kosmos_jax.checkpointing import params_io
from kosmos_jax.data.vocab import KosmosVocabulary
from kosmos_jax.models import config as config_lib

CHECKPOINTS = "checkpoints"
MODEL_CONFIG = params_io.CONFIG_FILE
CONFIG_GIN = "config.gin"
PARTITIONING = "partitioning.txt"
METRICS = "metrics.jsonl"
TRAIN_SUMMARY = "train_summary.json"
VOCAB_DIR = "vocab"
VOCAB_SPEC = "vocabulary.json"


def check_writable(directory: str) -> None:
  """Creates `directory` and writes a probe file, before any compute is spent on a run that
  could not save (a remote URI is left to its file system)."""
  if paths.is_remote(directory):
    return
  try:
    os.makedirs(directory, exist_ok=True)
    # A probe of its own per process: processes of one run check the same directory at once.
    with tempfile.NamedTemporaryFile("w", dir=directory, prefix=".write_check_") as probe:
      probe.write("ok")
  except OSError as e:
    raise PermissionError(f"MODEL_DIR {directory!r} cannot be written ({e.strerror}); choose "
                          "another --gin.MODEL_DIR or fix its permissions") from None


def is_training_run(directory: str) -> bool:
  return os.path.isdir(os.path.join(directory, CHECKPOINTS))


def read_model_config(directory: str) -> config_lib.KosmosConfig:
  with open(os.path.join(directory, MODEL_CONFIG)) as f:
    return config_lib.from_dict(json.load(f))


def save_vocabulary(vocab: KosmosVocabulary, directory: str) -> None:
  """Copies the SentencePiece model and the Kosmos id layout next to a run's checkpoints."""
  target = os.path.join(directory, VOCAB_DIR)
  os.makedirs(target, exist_ok=True)
  shutil.copyfile(vocab.sentencepiece_model_file, os.path.join(target, "spm.model"))
  spec = {"sentencepiece_model_file": "spm.model", "grounding_tokens": vocab.grounding_tokens,
          "image_placeholder_id": vocab.image_placeholder_id}
  with open(os.path.join(target, VOCAB_SPEC), "w") as f:
    json.dump(spec, f, indent=1)


def find_vocabulary(directory: str) -> Optional[KosmosVocabulary]:
  """The vocabulary saved with a run (`vocab/`), or the SentencePiece model of a Hugging Face
  Kosmos-2 import (`hf_assets/` or the HF directory itself); None if there is none."""
  spec_path = os.path.join(directory, VOCAB_DIR, VOCAB_SPEC)
  if os.path.exists(spec_path):
    with open(spec_path) as f:
      spec = json.load(f)
    return KosmosVocabulary(os.path.join(directory, VOCAB_DIR, spec["sentencepiece_model_file"]),
                            grounding_tokens=spec["grounding_tokens"],
                            image_placeholder_id=spec["image_placeholder_id"])
  for candidate in (os.path.join(directory, params_io.ASSETS_DIR, "sentencepiece.bpe.model"),
                    os.path.join(directory, "sentencepiece.bpe.model")):
    if os.path.exists(candidate):
      return KosmosVocabulary(candidate, grounding_tokens=True, image_placeholder_id=None)
  return None
