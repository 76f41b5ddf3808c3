"""Ask a model about images from the command line.

  python -m kosmos_jax.infer --checkpoint=RUN_OR_CKPT_DIR --image=cat.jpg --prompt="An image of"
  python -m kosmos_jax.infer --checkpoint=DIR --input_jsonl=in.jsonl --output_jsonl=out.jsonl

A prompt may hold several images: put `<image>` where each goes and pass `--image` once per
marker (in order); with one `--image` and no marker the image goes first. Each input jsonl line
is {"prompt": "...", "images": ["a.jpg", ...]} (optional "id", "max_new_tokens"); each output
line adds "output". Decoding: --strategy greedy | beam | sample, --beam_size, --max_new_tokens.

Paths may be relative (to the working directory) or start with `~`; image paths inside a jsonl
line are relative to the jsonl file's folder. A jsonl line that cannot be served (malformed
JSON, missing or broken image, marker/image count mismatch, prompt too long) gets
{"id": ..., "line": N, "error": "..."} in its place and every other line is still answered; a
summary goes to stderr. Exit status: 0 every line served; 3 some lines failed (the others were
written); 2 the command itself could not run (e.g. no --checkpoint, unreadable input), with one
`error:` line on stderr.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Optional, Sequence

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from kosmos_jax import cli
from kosmos_jax import paths

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


SERVED_ALL, USAGE_ERROR, SOME_FAILED = 0, 2, 3


def read_image(path: str, size: int) -> np.ndarray:
  """An image file through the training recipe; a missing, empty or undecodable file is a
  ValueError naming it."""
  if not os.path.isfile(path):
    raise ValueError(f"image {path!r} not found")
  if os.path.getsize(path) == 0:
    raise ValueError(f"image {path!r} is an empty file")
  try:
    return images_lib.read_image_file(path, size)
  except tf.errors.OpError as e:
    raise ValueError(f"image {path!r} cannot be decoded ({e.message.split(';')[0]}); "
                     "use JPEG, PNG, GIF or BMP") from None


def make_request(index: int, prompt: str, image_paths: Sequence[str], size: int,
                 request_id: Optional[str] = None) -> runner_lib.Example:
  """One request: images read with the training recipe, one `<image>` marker per image."""
  images = [read_image(p, size) for p in image_paths]
  prompt = prompts_lib.with_image_markers(prompt, len(images))
  stacked = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
  return runner_lib.Example(id=request_id or str(index), prompt=prompt, images=stacked)


def parse_line(line: str, number: int, base: str, size: int) -> tuple[dict, runner_lib.Example]:
  """A jsonl request -> (the request, its Example); ValueError says what is wrong with it."""
  try:
    request = json.loads(line)
  except json.JSONDecodeError as e:
    raise ValueError(f"not valid JSON ({e.msg} at column {e.colno})") from None
  if not isinstance(request, dict):
    raise ValueError("a line must be a JSON object like {\"prompt\": ..., \"images\": [...]}")
  prompt, image_paths = request.get("prompt"), request.get("images", [])
  if not isinstance(prompt, str) or not prompt.strip():
    raise ValueError("\"prompt\" must be a non-empty string")
  if not isinstance(image_paths, list) or not all(isinstance(p, str) for p in image_paths):
    raise ValueError("\"images\" must be a list of file paths")
  paths_here = [paths.resolve(p, base) for p in image_paths]
  request_id = str(request.get("id", number))
  return request, make_request(number, prompt, paths_here, size, request_id)


def _check_length(example: runner_lib.Example, vocab, num_image_tokens: int, max_len: int,
                  max_new_tokens: int) -> None:
  segments = prompts_lib.split_prompt(example.prompt, example.images)
  length = len(prompts_lib.encode_prompt(vocab, segments, num_image_tokens)[0])
  if length + max_new_tokens > max_len:
    raise ValueError(f"prompt is {length} tokens; with {max_new_tokens} new tokens that exceeds "
                     f"the model's {max_len}: shorten it or lower --max_new_tokens")


def _decode_config(vocab) -> decoding.DecodeConfig:
  return decoding.DecodeConfig(
      strategy=_STRATEGY.value, beam_size=_BEAM.value if _STRATEGY.value == "beam" else 1,
      max_new_tokens=_MAX_NEW.value, temperature=_TEMPERATURE.value, top_p=_TOP_P.value,
      no_repeat_ngram_size=_NO_REPEAT.value, eos_id=vocab.eos_id, pad_id=vocab.pad_id)


def serve_jsonl(path: str, model, params, config, vocab) -> tuple[list[str], int]:
  """One output line per request line (blank lines skipped), in order; returns the lines and how
  many failed. A bad line gets {"id", "line", "error"}; the others are still answered."""
  with open(path) as f:
    lines = [(n, line) for n, line in enumerate(f, start=1) if line.strip()]
  if not lines:
    raise ValueError(f"--input_jsonl {path!r} has no requests")
  base, size = os.path.dirname(path), config.vision.image_size
  results: list[dict] = []
  good: list[tuple[int, dict, runner_lib.Example]] = []
  for n, line in lines:
    try:
      request, example = parse_line(line, n, base, size)
      _check_length(example, vocab, config.num_image_tokens, config.text.max_len, _MAX_NEW.value)
      good.append((len(results), request, example))
      results.append({})
    except ValueError as e:
      results.append({"id": _line_id(line, n), "line": n, "error": str(e)})
  if good:
    runner = runner_lib.Runner(model, params, vocab, batch_size=min(_BATCH.value, len(good)))
    outputs = runner.generate([example for _, _, example in good], _decode_config(vocab))
    for (slot, request, _), output in zip(good, outputs):
      results[slot] = {**request, "output": output.strip()}
  return [json.dumps(r) for r in results], len(lines) - len(good)


def _line_id(line: str, number: int) -> str:
  try:
    value = json.loads(line)
    return str(value.get("id", number)) if isinstance(value, dict) else str(number)
  except json.JSONDecodeError:
    return str(number)


def main(argv: Sequence[str]) -> int:
  del argv
  if not _CHECKPOINT.value:
    raise app.UsageError("--checkpoint is required")
  vocab = KosmosVocabulary(paths.resolve(_VOCAB.value)) if _VOCAB.value else None
  model, params, config, vocab, what = model_loading.load_for_inference(_CHECKPOINT.value, vocab)
  print(f"loaded {what}", file=sys.stderr)
  if not _INPUT.value:
    example = make_request(0, _PROMPT.value, [paths.resolve(p) for p in _IMAGES.value],
                           config.vision.image_size)
    _check_length(example, vocab, config.num_image_tokens, config.text.max_len, _MAX_NEW.value)
    runner = runner_lib.Runner(model, params, vocab, batch_size=1)
    print(runner.generate([example], _decode_config(vocab))[0].strip())
    return SERVED_ALL
  input_path = paths.resolve(_INPUT.value)
  if not os.path.isfile(input_path):
    raise FileNotFoundError(f"--input_jsonl {input_path!r} not found")
  lines, failed = serve_jsonl(input_path, model, params, config, vocab)
  if _OUTPUT.value:
    with open(paths.resolve(_OUTPUT.value), "w") as f:
      f.write("\n".join(lines) + "\n")
  else:
    print("\n".join(lines))
  print(f"served {len(lines) - failed} of {len(lines)} lines ({failed} failed)", file=sys.stderr)
  return SOME_FAILED if failed else SERVED_ALL


if __name__ == "__main__":
  cli.run(main)
