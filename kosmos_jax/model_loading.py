"""Loads a model for inference from any of the three things users hold:

  * a training run directory (MODEL_DIR: checkpoints/, model_config.json, vocab/),
  * a weights-only checkpoint (`kosmos_jax.params_io`: model_config.json + params/, e.g. the
    output of `kosmos_jax.convert.hf_kosmos2`),
  * a Hugging Face Kosmos-2 directory (config.json + safetensors).

The vocabulary comes from the directory (`vocab/` written by training, `hf_assets/` or
`sentencepiece.bpe.model` from an HF import) unless one is passed.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from kosmos_jax import params_io
from kosmos_jax.data.vocab import KosmosVocabulary
from kosmos_jax.models import config as config_lib
from kosmos_jax.models import kosmos

VOCAB_DIR = "vocab"
VOCAB_SPEC = "vocabulary.json"


def save_vocabulary(vocab: KosmosVocabulary, directory: str) -> None:
  """Copies the SentencePiece model and the Kosmos id layout next to a run's checkpoints."""
  target = os.path.join(directory, VOCAB_DIR)
  os.makedirs(target, exist_ok=True)
  model_file = os.path.join(target, "spm.model")
  with open(model_file, "wb") as f:
    with open(vocab.sentencepiece_model_file, "rb") as src:
      shutil.copyfileobj(src, f)
  spec = {"sentencepiece_model_file": "spm.model", "grounding_tokens": vocab.grounding_tokens,
          "image_placeholder_id": vocab.image_placeholder_id}
  with open(os.path.join(target, VOCAB_SPEC), "w") as f:
    json.dump(spec, f, indent=1)


def find_vocabulary(directory: str) -> Optional[KosmosVocabulary]:
  spec_path = os.path.join(directory, VOCAB_DIR, VOCAB_SPEC)
  if os.path.exists(spec_path):
    with open(spec_path) as f:
      spec = json.load(f)
    return KosmosVocabulary(os.path.join(directory, VOCAB_DIR, spec["sentencepiece_model_file"]),
                            grounding_tokens=spec["grounding_tokens"],
                            image_placeholder_id=spec["image_placeholder_id"])
  for candidate in (os.path.join(directory, "hf_assets", "sentencepiece.bpe.model"),
                    os.path.join(directory, "sentencepiece.bpe.model")):
    if os.path.exists(candidate):
      return KosmosVocabulary(candidate, grounding_tokens=True,
                              image_placeholder_id=None)
  return None


def _restore_run_params(run_dir: str) -> tuple[Any, config_lib.KosmosConfig]:
  """Params of the latest checkpoint of a training run (optimizer state is not read)."""
  with open(os.path.join(run_dir, "model_config.json")) as f:
    config = config_lib.from_dict(json.load(f))
  manager = ocp.CheckpointManager(os.path.join(run_dir, "checkpoints"))
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"{run_dir}/checkpoints has no finished checkpoint yet")
  abstract = jax.eval_shape(lambda: kosmos.init_params(config, jax.random.key(0)))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree_util.tree_map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), abstract)
  item = os.path.join(run_dir, "checkpoints", str(step), "state")
  restored = ocp.PyTreeCheckpointer().restore(
      item, args=ocp.args.PyTreeRestore(
          item={"params": target},
          restore_args=ocp.checkpoint_utils.construct_restore_args({"params": target}),
          partial_restore=True))
  manager.close()
  return restored["params"], config


def load_for_inference(path: str, vocab: Optional[KosmosVocabulary] = None):
  """Returns (model, params, config, vocabulary, description)."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"--checkpoint {path!r} is not a directory")
  if os.path.isdir(os.path.join(path, "checkpoints")):
    params, config = _restore_run_params(path)
    kind = "training run"
  elif os.path.isdir(os.path.join(path, params_io.PARAMS_DIR)):
    params, config = params_io.load_params(path)
    kind = "weights-only checkpoint"
  elif os.path.exists(os.path.join(path, "config.json")):
    from kosmos_jax.convert import hf_kosmos2  # pylint: disable=g-import-not-at-top
    params, config, _ = hf_kosmos2.load_hf_kosmos2(path)
    kind = "Hugging Face Kosmos-2 directory"
  else:
    raise FileNotFoundError(
        f"{path!r} is neither a training run (checkpoints/), a kosmos-jax weights checkpoint "
        "(params/ + model_config.json) nor a Hugging Face directory (config.json)")
  vocab = vocab or find_vocabulary(path)
  if vocab is None:
    raise FileNotFoundError(f"no vocabulary found in {path!r} (looked for {VOCAB_DIR}/ and "
                            "sentencepiece.bpe.model); pass --vocab=PATH/TO/spm.model")
  return kosmos.Kosmos(config), params, config, vocab, f"{kind} {path}"
