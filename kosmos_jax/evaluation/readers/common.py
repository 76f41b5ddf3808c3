"""What every benchmark reader shares: path checks with errors that name the gin macro to set,
tolerant json / jsonl / csv reading, counting of skipped records, and the conversion of Python
records into the source records `kosmos_jax.evaluation.tasks.standardize` expects.

A reader parses the official annotation files in Python when its dataset is built (never when
the task is registered), so a gin file naming every benchmark parses and registers on machines
that hold only some of them. Images stay on disk as paths until the tf.data pipeline reads and
decodes them, so a 50k-image split costs a list of file names in memory, not the pixels.

Records that cannot be used are skipped, never fatal and never silent: each build logs one
warning per split with the count of each reason and a few examples, and adds the counts to
the process-wide counters of `kosmos_jax.data.preprocessors` under
`eval/{task}/{split}/{reason}` (so `pp.record_counts()` reports them next to the training
pipeline's). `skipped_records(task)` returns them per split. Reasons:
  bad_json_line       a jsonl line that is not a json object
  malformed_record    a record missing a field the benchmark needs, or with a bad value
  missing_image       the image file named by a record does not exist
  missing_label       an unlabelled record (a hidden test set; a VQA question without answers)
  not_an_image_file   a file other than an image in a class folder (ImageNet, Rendered SST-2)
  image_unreadable    the image exists but cannot be read or decoded (counted as the dataset is
                      iterated, by `preprocessors.map_skipping_errors`)
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import functools
import json
import logging
import os
import re
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from kosmos_jax import paths
from kosmos_jax.data import images as images_lib
from kosmos_jax.data import preprocessors as pp
from kosmos_jax.data import prompts as prompts_lib
from kosmos_jax.evaluation import tasks as eval_tasks

IMAGE = prompts_lib.IMAGE_MARKER
DEFAULT_IMAGE_SIZE = images_lib.DEFAULT_IMAGE_SIZE
COUNTER_PREFIX = "eval"
IMAGE_UNREADABLE = "image_unreadable"
_EXAMPLES_LOGGED = 3


# ----------------------------------------------------------------------------- paths

@functools.lru_cache(maxsize=None)
def path_macros() -> dict[str, str]:
  """Every required path macro of the gin/evals/ group files (`MACRO = %gin.REQUIRED`) -> the
  file that declares it, read from the files themselves (paper_benchmarks.gin includes them)."""
  pattern = re.compile(r"^([A-Z][A-Z0-9_]*)\s*=\s*%gin\.REQUIRED", re.M)
  folder = os.path.join(paths.GIN_DIR, "evals")
  macros = {}
  for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
    if name.endswith(".gin") and name != "paper_benchmarks.gin":
      with open(os.path.join(folder, name)) as f:
        for macro in pattern.findall(f.read()):
          macros.setdefault(macro, name)
  return macros


@dataclasses.dataclass(frozen=True)
class PathArg:
  """Where a path came from, to tell the user what to fix when it is wrong.

  reader: the registration function (e.g. "hateful_memes"); arg: its argument;
  macro: the gin macro that feeds it in gin/evals/*.gin; expects: what should be there.
  """
  reader: str
  arg: str
  macro: str
  expects: str

  def hint(self) -> str:
    gin_file = path_macros().get(self.macro, "paper_benchmarks.gin")
    return (f"set the gin macro {self.macro} (e.g. --gin.{self.macro}=\"'/data/...'\"; see "
            f"gin/evals/{gin_file}) or pass {self.arg}= to "
            f"kosmos_jax.evaluation.readers.{self.reader}; it should be {self.expects}")


def require_path(path: Optional[str], where: PathArg, *, directory: Optional[bool] = None
                 ) -> str:
  """Returns `path` if it exists (and is a directory / file when asked), else raises an error
  that names the path, the gin macro and what the path should hold."""
  if not path:
    raise ValueError(f"{where.reader}: no {where.arg} given; {where.hint()}")
  path = os.path.expanduser(str(path))
  if not os.path.exists(path):
    raise FileNotFoundError(f"{where.reader}: {where.arg} {path!r} does not exist; "
                            f"{where.hint()}")
  if directory is True and not os.path.isdir(path):
    raise NotADirectoryError(f"{where.reader}: {where.arg} {path!r} is not a directory; "
                             f"{where.hint()}")
  if directory is False and not os.path.isfile(path):
    raise IsADirectoryError(f"{where.reader}: {where.arg} {path!r} is not a file; "
                            f"{where.hint()}")
  return path


def find_file(folder: str, names: Sequence[str], where: PathArg, split: str) -> str:
  """The first of `names` (relative to `folder`) that exists; the error lists all tried."""
  for name in names:
    path = os.path.join(folder, name)
    if os.path.isfile(path):
      return path
  raise FileNotFoundError(
      f"{where.reader}: split {split!r} needs one of {list(names)} in {folder!r}, found none; "
      f"{where.hint()}")


def find_dir(folder: str, names: Sequence[str], where: PathArg, split: str) -> str:
  """The first of the sub-directories `names` of `folder` that exists."""
  for name in names:
    path = os.path.join(folder, name)
    if os.path.isdir(path):
      return path
  raise FileNotFoundError(
      f"{where.reader}: split {split!r} needs one of the folders {list(names)} in {folder!r}, "
      f"found none; {where.hint()}")


# ----------------------------------------------------------------------------- skip accounting

def _counter_name(task: str, split: str, reason: str) -> str:
  return f"{COUNTER_PREFIX}/{task}/{split}/{reason}"


class SkipLog:
  """Counts the records one build of (task, split) skips, by reason, with a few examples."""

  def __init__(self, task: str, split: str):
    self.task, self.split = task, split
    self.counts: collections.Counter = collections.Counter()
    self.examples: dict[str, list[str]] = collections.defaultdict(list)

  def skip(self, reason: str, detail: str) -> None:
    self.counts[reason] += 1
    if len(self.examples[reason]) < _EXAMPLES_LOGGED:
      self.examples[reason].append(detail)

  def finish(self, kept: int) -> None:
    """Adds the counts to the process-wide counters and logs a warning when any were skipped."""
    for reason, count in self.counts.items():
      pp.record_counter(_counter_name(self.task, self.split, reason)).assign_add(count)
    if self.counts:
      parts = [f"{count} {reason} (e.g. {'; '.join(self.examples[reason])})"
               for reason, count in sorted(self.counts.items())]
      logging.warning("eval task %s [%s]: kept %d records, skipped %d: %s", self.task,
                      self.split, kept, sum(self.counts.values()), ", ".join(parts))


def skipped_records(task: str) -> dict[str, dict[str, int]]:
  """Records skipped so far in this process by eval task `task`: {split: {reason: count}}.

  Cumulative over every build of the task's datasets, like `preprocessors.record_counts()`;
  `image_unreadable` is exact once the dataset has been iterated to the end. Reasons that
  skipped nothing are left out.
  """
  prefix = f"{COUNTER_PREFIX}/{task}/"
  out: dict[str, dict[str, int]] = collections.defaultdict(dict)
  for name, count in pp.record_counts().items():
    if name.startswith(prefix) and count:
      split, _, reason = name[len(prefix):].partition("/")
      out[split][reason] = count
  return dict(out)


# ----------------------------------------------------------------------------- file reading

def read_json(path: str, where: PathArg) -> Any:
  """A whole json file; a file that is not json is a user error (wrong file), so it raises."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{where.reader}: {path!r} is not valid json ({e}); {where.hint()}") from e


def read_jsonl(path: str, skips: SkipLog) -> Iterator[tuple[int, dict]]:
  """(line number from 1, object) for each json-object line of a jsonl file; see
  `parse_jsonl_lines`."""
  with open(path, encoding="utf-8") as f:
    yield from parse_jsonl_lines(f, os.path.basename(path), skips)


def parse_jsonl_lines(lines: Iterable[str], source: str, skips: SkipLog,
                      first_line: int = 1) -> Iterator[tuple[int, dict]]:
  """(line number, object) for each line that is a json object; blank lines are ignored and
  other lines are skipped as `bad_json_line` (`source`: the file name, for the log)."""
  for number, line in enumerate(lines, first_line):
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      skips.skip("bad_json_line", f"{source}:{number}: {e.msg}")
      continue
    if not isinstance(obj, dict):
      skips.skip("bad_json_line", f"{source}:{number}: not a json object")
      continue
    yield number, obj


def read_csv(path: str) -> list[dict[str, str]]:
  """Rows of a csv file with a header line, as dicts."""
  with open(path, encoding="utf-8", newline="") as f:
    return list(csv.DictReader(f))


class ImageChecker:
  """`exists(path)` with a cache: many records (VQA questions) share one image."""

  def __init__(self):
    self._cache: dict[str, bool] = {}

  def exists(self, path: str) -> bool:
    if path not in self._cache:
      self._cache[path] = os.path.isfile(path)
    return self._cache[path]


# ----------------------------------------------------------------------------- text helpers

def lower_first(text: str) -> str:
  """Lowercases the first letter, so a sentence can continue another ("The sun rose." after
  "... because"), unless the first word is "I" or an acronym ("TV")."""
  text = text.strip()
  if not text:
    return text
  first = text.split()[0]
  if first in ("I", "I'm", "I've", "I'd", "I'll") or (len(first) > 1 and first.isupper()):
    return text
  return text[0].lower() + text[1:]


def rotate_first(answers: Sequence[str], first: str) -> list[str]:
  """`answers` with one occurrence of `first` moved to the front (a permutation, so VQA
  accuracy, an average over leave-one-out subsets, does not change)."""
  answers = list(answers)
  if first in answers:
    answers.insert(0, answers.pop(answers.index(first)))
  return answers


def most_common(answers: Sequence[str]) -> str:
  """The most frequent answer; ties go to the one given first."""
  counts = collections.Counter(answers)
  return max(answers, key=lambda a: (counts[a], -answers.index(a)))


# ----------------------------------------------------------------------------- datasets

_LIST_FIELDS = ("references", "candidates", "image_paths")


def _column(records: Sequence[Mapping[str, Any]], key: str) -> Any:
  if key in _LIST_FIELDS:
    rows = [list(r[key]) for r in records]
    flat = [item for row in rows for item in row]
    return tf.RaggedTensor.from_row_lengths(tf.constant(flat, tf.string, shape=[len(flat)]),
                                            [len(row) for row in rows])
  if key == "label":
    return tf.constant([int(r[key]) for r in records], tf.int32, shape=[len(records)])
  return tf.constant([str(r[key]) for r in records], tf.string, shape=[len(records)])


def records_dataset(records: Sequence[Mapping[str, Any]], *, task: str, split: str,
                    image_size: Optional[int],
                    shared_candidates: Optional[Sequence[str]] = None) -> tf.data.Dataset:
  """Source records for `eval_tasks.standardize` from Python records.

  Each record has `id`, `prompt`, `references` (list), and optionally `candidates` (list),
  `label` (int) and `image_paths` (list of files, one per `<image>` in the prompt, in order).
  Images are read and decoded in the pipeline, resized and centre-cropped to `image_size`;
  unreadable ones drop their record, counted as `image_unreadable`. `shared_candidates` is
  the same candidate list for every record (e.g. 1,000 class names), stored once.
  """
  keys = ("id", "prompt", "references", "candidates", "label", "image_paths")
  present = [k for k in keys if k in records[0]] if records else ["id", "prompt", "references"]
  for i, record in enumerate(records):
    if set(record) != set(present):
      raise AssertionError(f"record {i} of {task} has fields {sorted(record)}, expected "
                           f"{sorted(present)} like the first record")
  ds = tf.data.Dataset.from_tensor_slices({k: _column(records, k) for k in present})
  if shared_candidates is not None:
    candidates = tf.constant(list(shared_candidates), tf.string)
    ds = ds.map(pp.no_autograph(lambda ex: {**ex, "candidates": candidates}))
  if "image_paths" not in present:
    return ds
  if image_size is None:
    raise ValueError(f"{task}: records have images but no image_size was given")
  spec = tf.TensorSpec([image_size, image_size, 3], tf.uint8)

  def load_one(path):
    return images_lib.decode_and_resize(tf.io.read_file(path), image_size)

  def load(ex):
    ex = dict(ex)
    ex["images"] = tf.map_fn(load_one, ex.pop("image_paths"), fn_output_signature=spec)
    return ex
  return pp.map_skipping_errors(ds, load, _counter_name(task, split, IMAGE_UNREADABLE))


def spec_with(spec: eval_tasks.EvalSpec, overrides: Optional[Mapping[str, Any]],
              reader: str) -> eval_tasks.EvalSpec:
  """`spec` with the fields in `overrides` replaced (gin: `spec_overrides = {...}`)."""
  if not overrides:
    return spec
  fields = {f.name for f in dataclasses.fields(eval_tasks.EvalSpec)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"{reader}: spec_overrides has unknown EvalSpec fields {unknown}; "
                     f"choose from {sorted(fields)}")
  return dataclasses.replace(spec, **dict(overrides))


def register(name: str, splits: Sequence[str],
             build: Callable[[str, SkipLog], tuple[list[dict], Optional[Sequence[str]]]], *,
             spec: eval_tasks.EvalSpec, metric_fns: Sequence[Callable],
             image_size: Optional[int]) -> str:
  """Registers eval task `name` whose split datasets come from `build(split, skips)`.

  `build` reads the files (only when a dataset is requested) and returns the records and the
  shared candidates (or None); skipped records go to `skips`.
  """
  if image_size is not None and image_size < 1:
    raise ValueError(f"{name}: image_size must be a positive number of pixels, got "
                     f"{image_size}")
  dataset_fn = functools.partial(_dataset_fn, name=name, build=build, image_size=image_size)
  return eval_tasks.add_eval_task(
      name, seqio.FunctionDataSource(dataset_fn, splits=tuple(splits)), spec, metric_fns,
      image_size=image_size or DEFAULT_IMAGE_SIZE)


def _dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None, *, name: str,
                build, image_size: Optional[int]) -> tf.data.Dataset:
  del shuffle_files, seed      # eval records come in file order; the evaluator samples demos
  skips = SkipLog(name, split)
  records, shared_candidates = build(split, skips)
  skips.finish(len(records))
  return records_dataset(records, task=name, split=split, image_size=image_size,
                         shared_candidates=shared_candidates)
