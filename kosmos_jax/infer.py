"""Ask a model about images from the command line.

  python -m kosmos_jax.infer --checkpoint=RUN_OR_CKPT_DIR --image=cat.jpg --prompt="An image of"
  python -m kosmos_jax.infer --checkpoint=DIR --input_jsonl=in.jsonl --output_jsonl=out.jsonl

A prompt may hold several images: put `<image>` where each goes and pass `--image` once per
marker (in order); with one `--image` and no marker the image goes first. Each input jsonl line
is {"prompt": "...", "images": ["a.jpg", ...]} (optional "id", "max_new_tokens"); each output
line adds "output". Decoding: --strategy greedy | beam | sample, --beam_size, --max_new_tokens.
"""
from __future__ import annotations

import json
import sys
from typing import Optional, Sequence

from absl import app
from absl import flags
import numpy as np

from kosmos_jax.data import images as images_lib
from kosmos_jax.data import prompts as prompts_lib
from kosmos_jax.data.vocab import KosmosVocabulary
from kosmos_jax.inference import decoding
from kosmos_jax.inference import model_loading
from kosmos_jax.inference import runner as runner_lib

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "training run dir, weights checkpoint or "
                                  "Hugging Face Kosmos-2 dir")
_IMAGES = flags.DEFINE_multi_string("image", [], "image file(s), one per <image> marker")
_PROMPT = flags.DEFINE_string("prompt", "An image of", "text prompt, may contain <image>")
_INPUT = flags.DEFINE_string("input_jsonl", None, "batch input: one request per line")
_OUTPUT = flags.DEFINE_string("output_jsonl", None, "batch output (default: stdout)")
_VOCAB = flags.DEFINE_string("vocab", None, "SentencePiece model, if the checkpoint has none")
_STRATEGY = flags.DEFINE_enum("strategy", "greedy", ["greedy", "beam", "sample"], "decoding")
_BEAM = flags.DEFINE_integer("beam_size", 5, "beams for --strategy=beam")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 32, "tokens to generate")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "for --strategy=sample")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "for --strategy=sample")
_NO_REPEAT = flags.DEFINE_integer("no_repeat_ngram_size", 0, "block repeated n-grams")
_BATCH = flags.DEFINE_integer("batch_size", 8, "prompts per decoding batch")


def make_request(index: int, prompt: str, image_paths: Sequence[str], size: int,
                 request_id: Optional[str] = None) -> runner_lib.Example:
  """One request: images read with the training recipe, one `<image>` marker per image."""
  images = [images_lib.read_image_file(p, size) for p in image_paths]
  try:
    prompt = prompts_lib.with_image_markers(prompt, len(images))
  except ValueError as e:
    raise ValueError(f"request {request_id or index}: {e}") from None
  stacked = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
  return runner_lib.Example(id=request_id or str(index), prompt=prompt, images=stacked)


def main(argv: Sequence[str]) -> None:
  del argv
  if not _CHECKPOINT.value:
    raise app.UsageError("--checkpoint is required")
  vocab = KosmosVocabulary(_VOCAB.value) if _VOCAB.value else None
  model, params, config, vocab, what = model_loading.load_for_inference(_CHECKPOINT.value, vocab)
  print(f"loaded {what}", file=sys.stderr)
  size = config.vision.image_size
  if _INPUT.value:
    with open(_INPUT.value) as f:
      requests = [json.loads(line) for line in f if line.strip()]
  else:
    requests = [{"prompt": _PROMPT.value, "images": list(_IMAGES.value)}]
  examples = [make_request(i, r.get("prompt", ""), r.get("images", []), size, r.get("id"))
              for i, r in enumerate(requests)]
  runner = runner_lib.Runner(model, params, vocab, batch_size=min(_BATCH.value, len(examples)))
  config_decode = decoding.DecodeConfig(
      strategy=_STRATEGY.value, beam_size=_BEAM.value if _STRATEGY.value == "beam" else 1,
      max_new_tokens=_MAX_NEW.value, temperature=_TEMPERATURE.value, top_p=_TOP_P.value,
      no_repeat_ngram_size=_NO_REPEAT.value, eos_id=vocab.eos_id, pad_id=vocab.pad_id)
  outputs = runner.generate(examples, config_decode)
  if not _INPUT.value:
    print(outputs[0].strip())
    return
  lines = [json.dumps({**r, "output": o.strip()}) for r, o in zip(requests, outputs)]
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w") as f:
      f.write("\n".join(lines) + "\n")
  else:
    print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
