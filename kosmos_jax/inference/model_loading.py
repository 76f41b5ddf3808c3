"""Loads a model for inference from any of the three things users hold:

  * a training run directory (MODEL_DIR: checkpoints/, model_config.json, vocab/),
  * a weights-only checkpoint (`kosmos_jax.checkpointing.params_io`: model_config.json + params/, e.g. the
    output of `kosmos_jax.convert.hf_kosmos2`),
  * a Hugging Face Kosmos-2 directory (config.json + safetensors).

The vocabulary comes from the directory (`vocab/` written by training, `hf_assets/` or
`sentencepiece.bpe.model` from an HF import) unless one is passed.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax

from kosmos_jax import paths
from kosmos_jax.checkpointing import checkpointer
from kosmos_jax.checkpointing import params_io
from kosmos_jax.checkpointing import run_dir as run_dir_lib
from kosmos_jax.data.vocab import KosmosVocabulary
from kosmos_jax.models import config as config_lib
from kosmos_jax.models import kosmos

def _restore_run_params(run_dir: str) -> tuple[Any, config_lib.KosmosConfig]:
  """Params of the latest checkpoint of a training run (optimizer state is not read)."""
  config = run_dir_lib.read_model_config(run_dir)
  checkpoints = checkpointer.Checkpointer(run_dir, read_only=True)
  step = checkpoints.latest_step()
  if step is None:
    raise FileNotFoundError(f"{run_dir}/{run_dir_lib.CHECKPOINTS} has no finished checkpoint yet")
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree_util.tree_map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
      params_io.abstract_params(config))
  params = checkpoints.restore_params(step, target)
  checkpoints.close()
  return params, config


def load_for_inference(path: str, vocab: Optional[KosmosVocabulary] = None):
  """Returns (model, params, config, vocabulary, description)."""
  path = paths.resolve(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"checkpoint {path!r} is not a directory: give a training run "
                            "dir, a weights-only checkpoint or a Hugging Face Kosmos-2 dir")
  if run_dir_lib.is_training_run(path):
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
  vocab = vocab or run_dir_lib.find_vocabulary(path)
  if vocab is None:
    raise FileNotFoundError(f"no vocabulary found in {path!r} (looked for {run_dir_lib.VOCAB_DIR}/ and "
                            "sentencepiece.bpe.model); pass --vocab=PATH/TO/spm.model")
  return kosmos.Kosmos(config), params, config, vocab, f"{kind} {path}"
