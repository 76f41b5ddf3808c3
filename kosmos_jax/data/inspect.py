"""Look at what a data layout (or a registered task) delivers before spending accelerator time.

  python -m kosmos_jax.data.inspect --format=webdataset --files='shards/*.tar' --n=8 \
      --contact_sheet=sheet.png --dump_jsonl=delivered.jsonl
  python -m kosmos_jax.data.inspect --format=mmc4 --files='docs/*.jsonl.zip' --image_dir=images/
  python -m kosmos_jax.data.inspect --task=my_captions --gin_file=my_data.gin

Prints the first `--n` records (text with `<image>` markers where images go, image count and
size), then how many records were delivered and the skip counters by reason. `--dump_jsonl`
writes one JSON object per delivered record ({"key", "text", "num_images"}) for an audit of
exactly what a task trains on; `--contact_sheet` a PNG grid of the first records' images with
their text. Records are read once, unshuffled, through the same decoding as training.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterator, Sequence

from absl import flags
import gin
import numpy as np
import seqio
import tensorflow as tf

from kosmos_jax import cli
from kosmos_jax import paths
from kosmos_jax.data import images as images_lib
from kosmos_jax.data import pipeline
from kosmos_jax.data import preprocessors as pp
from kosmos_jax.data import sources
from kosmos_jax.data import tasks   # registers the built-in tasks and the gin task builders
from kosmos_jax.data.prompts import IMAGE_MARKER

FORMAT_NAMES = sorted(sources.FORMATS)
_FORMAT = flags.DEFINE_enum("format", None, FORMAT_NAMES, "layout of --files")
_FILES = flags.DEFINE_string("files", None, "glob of the files (for tfds: the builder name)")
_TASK = flags.DEFINE_string("task", None, "a registered SeqIO task instead of --format/--files")
_IMAGE_DIR = flags.DEFINE_string("image_dir", None, "mmc4: folder of the documents' images")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds: the data_dir holding the builder")
_IMAGE_KEY = flags.DEFINE_string("image_key", "image", "tfds / tfrecord: the image feature")
_TEXT_KEY = flags.DEFINE_string("text_key", None,
                                "tfds: caption feature (default caption); tfrecord / jsonl: "
                                "the text feature or field (default text)")
_SPLIT = flags.DEFINE_string("split", "train", "split to read")
_N = flags.DEFINE_integer("n", 8, "records to print (and put on the contact sheet)", lower_bound=0)
_LIMIT = flags.DEFINE_integer("limit", None, "stop after this many delivered records")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", images_lib.DEFAULT_IMAGE_SIZE,
                                   "decoded image size (the model's)", lower_bound=1)
_MAX_PIXELS = flags.DEFINE_integer("max_image_pixels", images_lib.DEFAULT_MAX_IMAGE_PIXELS,
                                   "images over this many pixels are refused", lower_bound=1)
_SHEET = flags.DEFINE_string("contact_sheet", None, "write a PNG grid of the first records")
_DUMP = flags.DEFINE_string("dump_jsonl", None, "write one JSON object per delivered record")


def source_for(fmt: str, files: str, **options) -> seqio.DataSource:
  """The data source of a layout, read unshuffled in one pass."""
  patterns = {options.get("split", "train"): files}
  if fmt == "webdataset":
    return sources.webdataset_source(patterns)
  if fmt == "img2dataset_parquet":
    return sources.img2dataset_parquet_source(patterns)
  if fmt == "mmc4":
    if not options.get("image_dir"):
      raise cli.UserError("--format=mmc4 needs --image_dir=FOLDER (where image_name files are)")
    return sources.mmc4_source(patterns, image_dir=options["image_dir"])
  if fmt == "mmc4_tar":
    return sources.mmc4_tar_source(patterns)
  if fmt == "tfds":
    return sources.tfds_source(files, data_dir=options.get("data_dir"),
                               image_key=options.get("image_key") or "image",
                               caption_key=options.get("text_key") or "caption",
                               splits={options.get("split", "train"): options.get("split",
                                                                                  "train")})
  if fmt == "text":
    return sources.text_source(patterns)
  if fmt == "jsonl":
    return sources.jsonl_text_source(patterns, field=options.get("text_key") or "text")
  if fmt == "tfrecord":
    return _tfrecord_source(patterns, options.get("image_key") or "image",
                            options.get("text_key") or "text")
  raise cli.UserError(f"--format={fmt!r}; choose one of {FORMAT_NAMES}")


def _tfrecord_source(patterns, image_key: str, text_key: str) -> seqio.DataSource:
  return tasks.tfexample_source(patterns, {image_key: "bytes", text_key: "bytes"})


def records_of(fmt: str, source: seqio.DataSource, split: str, image_size: int,
               max_pixels: int) -> tf.data.Dataset:
  """A layout's records as training sees them, images decoded (unusable ones skipped)."""
  ds = source.get_dataset(split, shuffle=False)
  kind = sources.FORMATS[fmt]
  if fmt == "tfrecord":
    ds = ds.map(lambda ex: {"key": tf.strings.as_string(tf.size(ex["text"])), **ex})
    kind = "image_text"
  if kind == "image_text":
    return pp.decode_images(ds, "image", image_size, max_image_pixels=max_pixels)
  if kind == "interleaved":
    return pp.decode_images(ds, "images", image_size, index_key="image_text_index",
                            max_image_pixels=max_pixels)
  return ds


def _text(value) -> str:
  return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def describe(record: dict[str, Any], number: int) -> dict[str, Any]:
  """A delivered record -> {"key", "text" (with image markers), "num_images", "images"}."""
  if "texts" in record:           # interleaved: markers before the texts they were matched to
    slots = list(record["image_text_index"])
    pieces = []
    for i, text in enumerate(list(record["texts"]) + [None]):
      pieces += [IMAGE_MARKER] * slots.count(i)
      if text is not None:
        pieces.append(_text(text))
    text, images = " ".join(pieces), np.asarray(record["images"])
  elif "image" in record:
    text, images = f"{IMAGE_MARKER} {_text(record['text'])}", np.asarray(record["image"])[None]
  else:
    text, images = _text(record["text"]), np.zeros([0, 1, 1, 3], np.uint8)
  key = _text(record["key"]) if "key" in record else str(number)
  return {"key": key, "text": text, "num_images": int(len(images)), "images": images}


def task_records(name: str, split: str) -> Iterator[dict[str, Any]]:
  """A registered task's examples (before packing), targets decoded back to text."""
  task = pipeline.get_mixture_or_task(name)
  vocabulary = task.output_features["targets"].vocabulary
  ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1,
                        trim_output_features=False, try_in_mem_cache=False)
  for number, ex in enumerate(ds.as_numpy_iterator()):
    ids = [int(t) for t in ex["targets"]]
    text = vocabulary.decode(ids) if hasattr(vocabulary, "decode") else str(ids)
    yield {"key": _text(ex["key"]) if "key" in ex else str(number), "text": _text(text),
           "num_images": int(len(ex["images"])), "images": np.asarray(ex["images"])}


def contact_sheet(rows: Sequence[dict[str, Any]], path: str, thumb: int = 160,
                  columns: int = 4) -> None:
  """A PNG grid: each record's images side by side (up to 3), its key and text below."""
  import textwrap  # pylint: disable=g-import-not-at-top
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  cell_w, text_h = thumb * 3 // 2, 64
  cell_h = thumb + text_h
  grid_rows = max(1, -(-len(rows) // columns))
  sheet = Image.new("RGB", (columns * cell_w, grid_rows * cell_h), "white")
  draw = ImageDraw.Draw(sheet)
  for i, row in enumerate(rows):
    x, y = (i % columns) * cell_w, (i // columns) * cell_h
    shown = row["images"][:3]
    size = thumb if len(shown) <= 1 else cell_w // len(shown)
    for j, image in enumerate(shown):
      sheet.paste(Image.fromarray(image).resize((size, size)), (x + j * size, y))
    if not len(shown):
      draw.rectangle([x, y, x + thumb - 1, y + thumb - 1], fill=(220, 220, 220))
    lines = textwrap.wrap(f"{row['key']}: {row['text']}", width=cell_w // 6)[:5]
    draw.multiline_text((x + 2, y + thumb + 2), "\n".join(lines), fill="black")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  sheet.save(path, format="PNG")


def _load_gin() -> None:
  files, bindings = cli.GIN_FILES.value, cli.GIN_BINDINGS.value   # --gin_file, --gin_bindings
  if not (files or bindings):
    return
  gin.add_config_file_search_path(paths.GIN_DIR)
  gin.parse_config_files_and_bindings(
      [paths.resolve(f, os.getcwd()) if os.path.exists(f) else f for f in files], bindings)


def _delivered() -> Iterator[dict[str, Any]]:
  if _TASK.value:
    if _FORMAT.value or _FILES.value:
      raise cli.UserError("give either --task, or --format and --files, not both")
    _load_gin()
    yield from task_records(_TASK.value, _SPLIT.value)
    return
  if not (_FORMAT.value and _FILES.value):
    raise cli.UserError(f"give --format (one of {', '.join(FORMAT_NAMES)}) and --files=GLOB, "
                        "or --task=NAME")
  source = source_for(_FORMAT.value, _FILES.value, image_dir=_IMAGE_DIR.value,
                      data_dir=_DATA_DIR.value, image_key=_IMAGE_KEY.value,
                      text_key=_TEXT_KEY.value, split=_SPLIT.value)
  ds = records_of(_FORMAT.value, source, _SPLIT.value, _IMAGE_SIZE.value, _MAX_PIXELS.value)
  for number, record in enumerate(ds.as_numpy_iterator()):
    yield describe(record, number)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise cli.UserError(f"unexpected arguments {argv[1:]}; flags are --format, --files, ...")
  before = pp.record_counts()
  shown, count, stopped = [], 0, False
  dump = None
  if _DUMP.value:
    os.makedirs(os.path.dirname(os.path.abspath(_DUMP.value)), exist_ok=True)
    dump = open(_DUMP.value, "w")
  try:
    for row in _delivered():
      count += 1
      if len(shown) < _N.value:
        shown.append(row)
        sizes = "x".join(str(s) for s in row["images"].shape[1:3]) if row["num_images"] else "-"
        print(f"[{count}] key={row['key']} images={row['num_images']} ({sizes})\n    "
              f"{row['text'][:300]}")
      if dump is not None:
        dump.write(json.dumps({k: row[k] for k in ("key", "text", "num_images")}) + "\n")
      elif len(shown) >= _N.value and not _SHEET.value and _LIMIT.value is None:
        stopped = True   # nothing else asked for: stop reading after the printed records
        break
      if _LIMIT.value is not None and count >= _LIMIT.value:
        break
  finally:
    if dump is not None:
      dump.close()
  skipped = {reason: n - before.get(reason, 0) for reason, n in pp.record_counts().items()
             if n - before.get(reason, 0) > 0 and reason != "truncated_to_row_length"}
  read_on = " before stopping (read further with --limit=N or --dump_jsonl)" if stopped else ""
  counted = "; counted by reason:" if skipped else "; nothing skipped"
  print(f"delivered {count} records{read_on}{counted}" +
        "".join(f"\n  {reason}: {n}" for reason, n in sorted(skipped.items())))
  if _SHEET.value:
    contact_sheet(shown, _SHEET.value)
    print(f"contact sheet: {_SHEET.value}")


if __name__ == "__main__":
  cli.run(main)
