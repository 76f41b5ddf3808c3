"""An HF-shaped front end to a kosmos-jax model, for migrating Kosmos-2 code:

  model = hf_compat.from_pretrained("kosmos-2-patch14-224")    # HF dir or kosmos-jax checkpoint
  logits = model(input_ids=..., pixel_values=..., image_embeds_position_mask=..., attention_mask=...)
  ids = model.generate(..., max_new_tokens=20)

`KosmosForConditionalGeneration` takes the arguments of HF's class of the same name, as numpy:
  input_ids                   [batch, length] int
  pixel_values                [batch, 3, H, W] float, already normalised (the HF processor's
                              output); uint8 is normalised with the config's image mean/std
  image_embeds_position_mask  [batch, length], exactly `latent_query_num` ones per row
  attention_mask              [batch, length], 0 = padding (left or right)
and returns numpy: logits [batch, length, vocab] from `__call__`, prompt + new token ids from
`generate` (greedy by default, or HF's sampling / beam / no-repeat-n-gram arguments; stops when
every row has produced eos; finished rows are filled with the pad id).

Positions follow HF exactly when `hf_positions` (the default): prompt positions count the tokens
that are not the pad id, and during `generate` a new token's position is its slot in the padded
row (HF derives it from the cache length, so with left padding HF's generated tokens sit
`num_pads` positions further than in training). `hf_positions=False` uses the training positions
(padding skipped throughout, from attention_mask). One HF quirk is not reproduced: a pad-id token
that attention_mask marks as real gets a zero position embedding in HF and a normal one here.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from kosmos_jax.checkpointing import params_io
from kosmos_jax.convert import hf_kosmos2
from kosmos_jax.inference import decoding
from kosmos_jax.models import config as config_lib
from kosmos_jax.models import decoder
from kosmos_jax.models import kosmos

# HF generate arguments whose value is fixed here (KV cache on, one sequence per prompt, exact
# beam stopping): the values accepted.
_FIXED_ARGS = {"use_cache": (True, None), "num_return_sequences": (1, None),
                 "early_stopping": (True, False, None)}
# HF GenerationConfig defaults for the arguments that select and shape the search.
_HF_DEFAULTS = {"do_sample": False, "num_beams": 1, "temperature": 1.0, "top_k": 50,
                "top_p": 1.0, "length_penalty": 1.0, "no_repeat_ngram_size": 0}


def decode_config_from_hf(max_new_tokens: int, eos_id: Optional[int], pad_id: int,
                          position_mode: str, **generate_kwargs) -> decoding.DecodeConfig:
  """HF `generate` keyword arguments -> a validated DecodeConfig (unknown ones raise)."""
  unknown = sorted(set(generate_kwargs) - set(_HF_DEFAULTS) - set(_FIXED_ARGS))
  if unknown:
    raise ValueError(f"generate: unsupported arguments {unknown}; supported: "
                     f"{sorted(_HF_DEFAULTS)} (+ seed for sampling)")
  bad = {k: v for k, v in generate_kwargs.items()
         if k in _FIXED_ARGS and v not in _FIXED_ARGS[k]}
  if bad:
    raise ValueError(f"generate: {bad} is not supported (one sequence per prompt, KV cache on)")
  args = {**_HF_DEFAULTS, **{k: v for k, v in generate_kwargs.items()
                             if k in _HF_DEFAULTS and v is not None}}
  if args["do_sample"] and args["num_beams"] > 1:
    raise ValueError("generate: beam sampling (do_sample=True with num_beams > 1) is not supported")
  strategy = "sample" if args["do_sample"] else "beam" if args["num_beams"] > 1 else "greedy"
  return decoding.DecodeConfig(
      strategy=strategy, max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id,
      beam_size=args["num_beams"], length_penalty=args["length_penalty"],
      temperature=args["temperature"], top_k=args["top_k"] or 0, top_p=args["top_p"],
      no_repeat_ngram_size=args["no_repeat_ngram_size"], position_mode=position_mode).validate()


@functools.partial(jax.jit, static_argnums=0)
def _forward(module: kosmos.Kosmos, params: Any, inputs: dict) -> jax.Array:
  """Jitted forward; one compile per (config, input shapes), shared by all instances."""
  return module.apply({"params": params}, **inputs)


class KosmosForConditionalGeneration:
  """Params + config behind the call signature of HF `Kosmos2ForConditionalGeneration`."""

  def __init__(self, params: Any, config: config_lib.KosmosConfig, *, eos_token_id: int = 2,
               pad_token_id: int = 1, bos_token_id: int = 0, hf_positions: bool = True):
    self.config = config
    self.eos_token_id = eos_token_id
    self.pad_token_id = pad_token_id
    self.bos_token_id = bos_token_id
    self.hf_positions = hf_positions
    # device transfer and decoding layer layout once, not on every call
    self.module, self.params = decoding.decoding_layout(kosmos.Kosmos(config),
                                                        jax.device_put(params))

  def _inputs(self, input_ids, pixel_values, image_embeds_position_mask, attention_mask
              ) -> dict[str, Optional[jnp.ndarray]]:
    """HF-style numpy arguments -> Kosmos call arguments (validated)."""
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
      raise ValueError(f"input_ids must be [batch, length], got shape {ids.shape}")
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
    if mask.shape != ids.shape:
      raise ValueError(f"attention_mask has shape {mask.shape}, input_ids {ids.shape}")
    segment_ids = (mask != 0).astype(np.int32)
    if self.hf_positions:
      # HF: position ids count non-pad *tokens*; pad-id tokens repeat the previous position.
      real = (ids != self.pad_token_id).astype(np.int32)
      positions = np.maximum(np.cumsum(real, axis=1) - 1, 0).astype(np.int32)
    else:
      positions = np.asarray(jax.device_get(
          decoder.padded_positions(jnp.asarray(segment_ids))))
    inputs = dict(tokens=jnp.asarray(ids, jnp.int32), segment_ids=jnp.asarray(segment_ids),
                  positions=jnp.asarray(positions), images=None, image_token_mask=None)
    if pixel_values is None:
      return inputs
    pixels = np.asarray(pixel_values)
    v = self.config.vision
    want = (ids.shape[0], v.num_channels, v.image_size, v.image_size)
    if pixels.shape != want:
      raise ValueError(f"pixel_values has shape {pixels.shape}; expected {want} "
                       "([batch, channels, height, width], one image per row, as HF).")
    if image_embeds_position_mask is None:
      raise ValueError("pixel_values needs image_embeds_position_mask (1 at the image slots)")
    slots = np.asarray(image_embeds_position_mask)
    if slots.shape != ids.shape:
      raise ValueError(f"image_embeds_position_mask has shape {slots.shape}, input_ids {ids.shape}")
    counts = (slots != 0).sum(axis=1)
    if np.any(counts != self.config.num_image_tokens):
      raise ValueError(f"image_embeds_position_mask must have exactly latent_query_num="
                       f"{self.config.num_image_tokens} ones per row; got {counts.tolist()}")
    if pixels.dtype != np.uint8:
      pixels = pixels.astype(np.float32)
    images = np.transpose(pixels, (0, 2, 3, 1))[:, None]          # [batch, 1, H, W, C]
    inputs.update(images=jnp.asarray(images), image_token_mask=jnp.asarray(slots != 0, jnp.int32))
    return inputs

  def __call__(self, input_ids, pixel_values=None, image_embeds_position_mask=None,
               attention_mask=None) -> np.ndarray:
    """Logits [batch, length, vocab] (float32 numpy)."""
    inputs = self._inputs(input_ids, pixel_values, image_embeds_position_mask, attention_mask)
    return np.asarray(_forward(self.module, self.params, inputs))

  def generate(self, input_ids, pixel_values=None, image_embeds_position_mask=None,
               attention_mask=None, max_new_tokens: int = 20,
               eos_token_id: Optional[int] = None, seed: int = 0,
               **generate_kwargs) -> np.ndarray:
    """HF-style `generate`: prompt + new tokens [batch, length + n], n <= max_new_tokens.

    Takes HF's search arguments (do_sample, num_beams, temperature, top_k, top_p,
    length_penalty, no_repeat_ngram_size) with HF's defaults (top_k=50 when sampling); greedy
    unless they say otherwise. Sampling draws from `jax.random.key(seed)` (same seed, same
    tokens; the draws are not torch's). Beam search stops exactly (see `kosmos_jax.inference.decoding`);
    HF's default stopping heuristic can differ when beams end at different lengths.
    """
    eos = self.eos_token_id if eos_token_id is None else eos_token_id
    config = decode_config_from_hf(
        max_new_tokens, eos, self.pad_token_id,
        "slot" if self.hf_positions else "skip_padding", **generate_kwargs)
    inputs = self._inputs(input_ids, pixel_values, image_embeds_position_mask, attention_mask)
    out = decoding.decode(
        self.module, self.params, inputs["tokens"], config, images=inputs["images"],
        image_token_mask=inputs["image_token_mask"], segment_ids=inputs["segment_ids"],
        positions=inputs["positions"],
        rng=jax.random.key(seed) if config.strategy == "sample" else None)
    length = np.asarray(input_ids).shape[1] + int(out.num_generated)
    return np.asarray(out.sequences)[:, :length].astype(np.asarray(input_ids).dtype)


def from_pretrained(path: str, *, scan_layers: bool = True, dtype: str = "float32",
                    allow_pickle: bool = False, hf_positions: bool = True
                    ) -> KosmosForConditionalGeneration:
  """Loads a HF Kosmos-2 directory, or a kosmos-jax checkpoint, behind an HF-like API.

  Args:
    path: a HF directory (config.json + safetensors) or a directory written by
      `params_io.save_params` / this module's CLI (model_config.json + params/).
    scan_layers: layer layout for a HF directory (a checkpoint keeps its own).
    dtype: activation dtype ("float32" for exact parity with HF).
    allow_pickle: accept pytorch_model.bin (read with torch.load(weights_only=True)).
    hf_positions: reproduce HF's position ids during `generate` (see this module's docstring).
  """
  if os.path.exists(os.path.join(path, params_io.CONFIG_FILE)):
    params, config = params_io.load_params(path)
    config = dataclasses.replace(config, dtype=dtype)
    tokens = hf_kosmos2.checkpoint_tokens(path, config)
  else:
    params, config, tokens = hf_kosmos2.load_hf_kosmos2(path, scan_layers=scan_layers, dtype=dtype,
                                             allow_pickle=allow_pickle)
  return KosmosForConditionalGeneration(
      params, config, eos_token_id=tokens.eos, pad_token_id=tokens.pad,
      bos_token_id=tokens.bos, hf_positions=hf_positions)
