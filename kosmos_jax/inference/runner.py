"""Batched generation and candidate scoring for prompts with images: the serving core under
`infer`, the eval tasks and inference evals during training.

A request is an `Example`: a prompt with one `<image>` marker per image (`data.prompts`), its
images at the model's size, and (for scoring) the candidate continuations to rank.

  runner = Runner(model, params, vocab, batch_size=8)
  texts = runner.generate([Example("0", "<image> An image of", images)], DecodeConfig(...))
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax
import numpy as np

from kosmos_jax.data import prompts as prompts_lib
from kosmos_jax.data.vocab import KosmosVocabulary
from kosmos_jax.inference import decoding
from kosmos_jax.inference import scoring


@dataclasses.dataclass
class Example:
  """One request: `prompt` holds one `<image>` marker per row of `images`."""
  id: str
  prompt: str
  images: np.ndarray           # [n, S, S, 3] uint8
  candidates: list[str] = dataclasses.field(default_factory=list)


def _bucket(length: int, multiple: int = 16) -> int:
  return -(-length // multiple) * multiple


class Runner:
  """Holds a model + params + vocabulary; generates or scores examples in fixed-size batches."""

  def __init__(self, model, params, vocab: KosmosVocabulary, *, batch_size: int = 16,
               num_image_tokens: Optional[int] = None, image_size: Optional[int] = None):
    # The layer layout decoding runs, once here rather than inside every decode call.
    self.model, self.params = decoding.decoding_layout(model, params)
    self.vocab = vocab
    self.batch_size = batch_size
    config = model.config
    self.num_image_tokens = num_image_tokens or config.num_image_tokens
    self.image_size = image_size or config.vision.image_size

  def _batch(self, examples: Sequence[Example]) -> dict[str, np.ndarray]:
    encoded = [prompts_lib.encode_prompt(self.vocab, prompts_lib.split_prompt(e.prompt, e.images),
                                         self.num_image_tokens) for e in examples]
    # Pad rows to a fixed batch size and the length to a bucket: fewer distinct compilations.
    while len(encoded) < self.batch_size:
      encoded.append(encoded[-1])
    batch = prompts_lib.batch_prompts(encoded, self.image_size, pad_id=self.vocab.pad_id)
    length = _bucket(batch["tokens"].shape[1])
    pad = length - batch["tokens"].shape[1]
    for key in ("tokens", "image_token_mask", "segment_ids"):
      fill = self.vocab.pad_id if key == "tokens" else 0
      batch[key] = np.pad(batch[key], ((0, 0), (pad, 0)), constant_values=fill)
    return batch

  def generate(self, examples: Sequence[Example], config: decoding.DecodeConfig,
               constraint: Optional[decoding.PrefixTrie] = None, seed: int = 0) -> list[str]:
    """Generated text (up to eos) for each example (`seed` drives strategy "sample")."""
    out = []
    rng = jax.random.key(seed) if config.strategy == "sample" else None
    for start in range(0, len(examples), self.batch_size):
      chunk = examples[start:start + self.batch_size]
      batch = self._batch(chunk)
      result = decoding.decode(self.model, self.params, batch["tokens"], config,
                               images=batch["images"], image_token_mask=batch["image_token_mask"],
                               segment_ids=batch["segment_ids"], constraint=constraint,
                               rng=None if rng is None else jax.random.fold_in(rng, start))
      sequences = np.asarray(jax.device_get(result.sequences))
      prompt_len = batch["tokens"].shape[1]
      for row in range(len(chunk)):
        new = sequences[row, prompt_len:].tolist()
        if config.eos_id is not None and config.eos_id in new:
          new = new[:new.index(config.eos_id)]
        new = [t for t in new if t != config.pad_id]
        out.append(self.vocab.decode(new))
    return out

  def score(self, examples: Sequence[Example], normalization: str) -> list[list[float]]:
    """Per example, the log-likelihood (mean or sum) of each of its candidates."""
    out = []
    for start in range(0, len(examples), self.batch_size):
      chunk = list(examples[start:start + self.batch_size])
      batch = self._batch(chunk)
      cands = [[list(self.vocab.encode(c)) for c in e.candidates] for e in chunk]
      num = max(len(c) for c in cands)
      while len(cands) < self.batch_size:
        cands.append(cands[-1])
      flat = [c for row in cands for c in row + [row[-1]] * (num - len(row))]
      length = _bucket(max(len(c) for c in flat), 4)
      padded, mask = scoring.pad_sequences(flat, self.vocab.pad_id, length)
      shape = (self.batch_size, num, length)
      scores = scoring.score_continuations(
          self.model, self.params, batch["tokens"], np.asarray(padded).reshape(shape),
          continuation_mask=np.asarray(mask).reshape(shape), images=batch["images"],
          image_token_mask=batch["image_token_mask"], segment_ids=batch["segment_ids"])
      values = np.asarray(jax.device_get(scores.mean if normalization == "mean" else scores.total))
      for row, example in enumerate(chunk):
        out.append(values[row, :len(example.candidates)].tolist())
    return out
