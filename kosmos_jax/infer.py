"""Ask a model about images from the command line.

  python -m kosmos_jax.infer --checkpoint=RUN_OR_CKPT_DIR --image=cat.jpg --prompt="An image of"
  python -m kosmos_jax.infer --checkpoint=DIR --input_jsonl=in.jsonl --output_jsonl=out.jsonl

A prompt may hold several images: put `<image>` where each goes and pass `--image` once per
marker (in order); with one `--image` and no marker the image goes first. Each input jsonl line
is {"prompt": "...", "images": ["a.jpg", ...]} (optional "id", "max_new_tokens"); each output
line adds "output". Decoding: --strategy greedy | beam | sample, --beam_size, --max_new_tokens.

Paths given as flags are read from the working directory (`~` expanded); image paths inside a
jsonl line are read from the jsonl file's folder unless absolute. Blank lines are skipped. A line
that cannot be served (bad JSON, no prompt, a missing or corrupt image, marker/image mismatch)
becomes {"id": <its id or line number>, "line": N, "error": "..."}; the others are still answered,
in input order, and `served N of M lines (K failed)` goes to stderr.

Exit status: 0 all served; 3 some jsonl lines failed (the rest answered, output written);
2 a mistake that stops the command (missing --checkpoint, unreadable input, bad --image).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Optional, Sequence

from absl import flags
import jax
import numpy as np

from kosmos_jax import cli
from kosmos_jax import gin_utils
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

EXIT_SOME_FAILED = 3
_SHOWN_FAILURES = 10   # failed lines echoed to stderr before "... and K more"
_JSONL_PATHS_HINT = " (relative image paths are read from the jsonl file's folder)"


def _json_type(value: Any) -> str:
  """The JSON name of a parsed value's type, for error messages."""
  if value is None:
    return "null"
  if isinstance(value, bool):
    return "a boolean"
  return {dict: "an object", list: "a list", str: "a string"}.get(
      type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def check_image_file(path: str, hint: str = "") -> None:
  """cli.UserError naming the file if it is missing, a directory or empty (`hint` is appended
  to "not found")."""
  if not os.path.isfile(path):
    what = "is a directory, not an image file" if os.path.isdir(path) else "not found"
    raise cli.UserError(f"image {path!r} {what}{hint}")
  if os.path.getsize(path) == 0:
    raise cli.UserError(f"image {path!r} is an empty file (0 bytes): replace it with a "
                        "JPEG/PNG/WebP/GIF/BMP")


def read_image(path: str, size: int, hint: str = "") -> np.ndarray:
  """`images.read_image_file`, with a missing, empty, unreadable or corrupt file reported as one
  cli.UserError line naming it."""
  check_image_file(path, hint)
  try:
    return images_lib.read_image_file(path, size)
  except images_lib.ImageError as e:
    raise cli.UserError(f"image {path!r} cannot be decoded ({e}): use a JPEG, PNG, WebP, GIF or "
                        "BMP file") from None
  except OSError as e:
    raise cli.UserError(f"image {path!r} cannot be read: {e.strerror or e}") from None


def _example(request_id: str, prompt: str, image_paths: Sequence[str], size: int,
             hint: str = "") -> runner_lib.Example:
  """One request (markers checked before any image is read); errors are cli.UserError."""
  try:
    prompt = prompts_lib.with_image_markers(prompt, len(image_paths))
  except ValueError as e:
    raise cli.UserError(str(e)) from None
  images = [read_image(p, size, hint) for p in image_paths]
  stacked = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
  return runner_lib.Example(id=request_id, prompt=prompt, images=stacked)


def make_request(index: int, prompt: str, image_paths: Sequence[str], size: int,
                 request_id: Optional[str] = None) -> runner_lib.Example:
  """One request: images read with the training recipe, one `<image>` marker per image."""
  name = request_id or str(index)
  try:
    return _example(name, prompt, image_paths, size)
  except cli.UserError as e:
    raise cli.UserError(f"request {name}: {e}") from None


def _line_example(request: Any, number: int, size: int, base: str, default_max_new: int
                  ) -> tuple[runner_lib.Example, int]:
  """A parsed jsonl line -> (Example, its max_new_tokens); what is wrong as cli.UserError."""
  if not isinstance(request, dict):
    raise cli.UserError(f'expected a JSON object {{"prompt": ..., "images": [...]}}, got '
                        f"{_json_type(request)}")
  prompt = request.get("prompt")
  if prompt is None:
    raise cli.UserError('no "prompt": add "prompt": "..." to the line')
  if not isinstance(prompt, str):
    raise cli.UserError(f'"prompt" must be a string, got {_json_type(prompt)}')
  if not prompt.strip():
    raise cli.UserError('"prompt" is empty')
  image_paths = request.get("images", [])
  if not isinstance(image_paths, list) or not all(isinstance(p, str) and p for p in image_paths):
    raise cli.UserError(f'"images" must be a list of image file paths, got {image_paths!r:.80}')
  max_new = request.get("max_new_tokens", default_max_new)
  if isinstance(max_new, bool) or not isinstance(max_new, int) or max_new < 1:
    raise cli.UserError(f'"max_new_tokens" must be a positive integer, got {max_new!r:.40}')
  request_id = request.get("id")
  name = str(number) if request_id is None else str(request_id)
  resolved = [paths.resolve(p, base) for p in image_paths]
  return _example(name, prompt, resolved, size, _JSONL_PATHS_HINT), max_new


def _parse_line(text: str) -> Any:
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise cli.UserError(f"not valid JSON ({e.msg} at column {e.colno})") from None


def _read_lines(path: str) -> list[tuple[int, str]]:
  """(1-based line number, text) of the non-blank lines of the jsonl input."""
  if not os.path.isfile(path):
    what = "is a directory" if os.path.isdir(path) else "not found"
    raise cli.UserError(f"--input_jsonl {path!r} {what}: give a file with one JSON request per "
                        "line")
  try:
    with open(path, encoding="utf-8-sig") as f:
      text = f.read()
  except OSError as e:
    raise cli.UserError(f"--input_jsonl {path!r} cannot be read: {e.strerror or e}") from None
  except UnicodeDecodeError as e:
    raise cli.UserError(f"--input_jsonl {path!r} is not UTF-8 text (byte {e.start}): save it as "
                        "UTF-8 JSON lines") from None
  lines = [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
  if not lines:
    raise cli.UserError(f'--input_jsonl {path!r} has no requests: write one {{"prompt": ..., '
                        '"images": [...]} object per line')
  return lines


def _check_output(path: Optional[str]) -> None:
  """Fails before the model loads when the output file could not be written."""
  if path is None:
    return
  folder = os.path.dirname(path)
  if os.path.isdir(path):
    raise cli.UserError(f"--output_jsonl {path!r} is a directory: give a file name")
  if not os.path.isdir(folder):
    raise cli.UserError(f"--output_jsonl {path!r}: folder {folder!r} does not exist; create it "
                        "first")


def serve_lines(lines: Sequence[tuple[int, str]], base: str, size: int,
                generate: Callable[[Sequence[runner_lib.Example], int], list[str]],
                default_max_new: int) -> list[dict]:
  """One output record per line, in order: the input plus "output", or id, line and "error".

  Good lines are generated together, one `generate(examples, max_new_tokens)` call per distinct
  max_new_tokens, so lines without their own value decode exactly as one batch run.
  """
  records: list[Optional[dict]] = [None] * len(lines)
  requests: list[Any] = [None] * len(lines)
  groups: dict[int, list[tuple[int, runner_lib.Example]]] = {}
  for k, (number, text) in enumerate(lines):
    try:
      requests[k] = _parse_line(text)
      example, max_new = _line_example(requests[k], number, size, base, default_max_new)
    except cli.UserError as e:
      request_id = requests[k].get("id") if isinstance(requests[k], dict) else None
      records[k] = {"id": str(number) if request_id is None else request_id, "line": number,
                    "error": " ".join(cli.message(e).split())}
      continue
    groups.setdefault(max_new, []).append((k, example))
  for max_new, group in groups.items():
    outputs = generate([example for _, example in group], max_new)
    for (k, _), output in zip(group, outputs):
      records[k] = {**requests[k], "output": output.strip()}
  return records


def main(argv: Sequence[str]) -> int:
  del argv
  gin_utils.maybe_initialize_distributed()   # --multiprocess
  if not _CHECKPOINT.value:
    raise cli.UserError("--checkpoint is required: give a training run dir, a weights-only "
                        "checkpoint or a Hugging Face Kosmos-2 dir")
  if _MAX_NEW.value < 1 or _BATCH.value < 1:
    raise cli.UserError(f"--max_new_tokens={_MAX_NEW.value} and --batch_size={_BATCH.value} "
                        "must both be at least 1")
  input_path = paths.resolve(_INPUT.value) if _INPUT.value else None
  output_path = paths.resolve(_OUTPUT.value) if _OUTPUT.value else None
  image_paths = [paths.resolve(p) for p in _IMAGES.value]
  if input_path:
    if image_paths:
      raise cli.UserError('--image is for a single --prompt; with --input_jsonl list each '
                          'line\'s images in its "images"')
    lines = _read_lines(input_path)
    _check_output(output_path)
  else:
    for path in image_paths:   # cheap checks before the model loads; decoding comes later
      check_image_file(path)
  vocab = KosmosVocabulary(paths.resolve(_VOCAB.value)) if _VOCAB.value else None
  model, params, config, vocab, what = model_loading.load_for_inference(
      paths.resolve(_CHECKPOINT.value), vocab)
  print(f"loaded {what}", file=sys.stderr)
  size = config.vision.image_size

  def decode_config(max_new: int) -> decoding.DecodeConfig:
    return decoding.DecodeConfig(
        strategy=_STRATEGY.value, beam_size=_BEAM.value if _STRATEGY.value == "beam" else 1,
        max_new_tokens=max_new, temperature=_TEMPERATURE.value, top_p=_TOP_P.value,
        no_repeat_ngram_size=_NO_REPEAT.value, eos_id=vocab.eos_id, pad_id=vocab.pad_id)

  if not input_path:
    example = _example("0", _PROMPT.value, image_paths, size)
    runner = runner_lib.Runner(model, params, vocab, batch_size=1)
    print(runner.generate([example], decode_config(_MAX_NEW.value))[0].strip())
    return 0

  runners: dict[int, runner_lib.Runner] = {}

  def generate(examples: Sequence[runner_lib.Example], max_new: int) -> list[str]:
    batch = min(_BATCH.value, len(examples))
    if batch not in runners:
      runners[batch] = runner_lib.Runner(model, params, vocab, batch_size=batch)
    return runners[batch].generate(examples, decode_config(max_new))

  records = serve_lines(lines, os.path.dirname(input_path), size, generate, _MAX_NEW.value)
  text = "".join(json.dumps(r) + "\n" for r in records)
  if jax.process_index() > 0:   # multi-process: every process serves the batch, one writes
    text, output_path = "", None
  if output_path:
    with open(output_path, "w") as f:
      f.write(text)
  else:
    sys.stdout.write(text)
  failed = [r for r in records if "error" in r]
  for r in failed[:_SHOWN_FAILURES]:
    print(f"line {r['line']}: {r['error']}", file=sys.stderr)
  if len(failed) > _SHOWN_FAILURES:
    print(f"... and {len(failed) - _SHOWN_FAILURES} more failed lines", file=sys.stderr)
  print(f"served {len(records) - len(failed)} of {len(records)} lines ({len(failed)} failed)",
        file=sys.stderr)
  return EXIT_SOME_FAILED if failed else 0


if __name__ == "__main__":
  cli.run(main)
