"""Readers of the language-only benchmarks of Kosmos-1 (docs/evaluation.md §4; paper §4.8), from their
official jsonl / csv releases, as multiple choice by likelihood ("score" mode, accuracy).

Each record is plain text: `prompt` is the context, ending where the answer starts, and
`candidates` are the continuations the model's log-likelihood ranks (per-token mean by
default, `spec_overrides={'score_normalization': 'sum'}` for the sum); `label` is the right one
and `references[0]` its text, which k-shot demonstrations (`EvalSpec.demo_split`, train unless
the benchmark has none) show after their prompt.

  hellaswag   `{activity_label}: {ctx}` -> one of 4 endings
  piqa        `{goal}` -> sol1 | sol2 (labels in the separate `*-labels.lst` file)
  copa        `{premise minus its period} because` / `... so` -> choice1 | choice2
  boolq       `{passage} Question: {question}? Answer:` -> no | yes
  cb          `{premise} Question: {hypothesis} True, False or Neither? Answer:` -> one of 3
  storycloze  the four story sentences -> ending 1 | ending 2
  winogrande  the sentence up to `_` -> `{option}{rest of the sentence}` for both options
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable, Mapping, Optional, Sequence

from kosmos_jax.evaluation import metrics as metrics_lib
from kosmos_jax.evaluation import tasks as eval_tasks
from kosmos_jax.evaluation.readers import common
from kosmos_jax.evaluation.readers.common import PathArg

SCORE_SPEC = eval_tasks.EvalSpec(mode="score", score_normalization="mean", demo_split="train")
_WIKIHOW_MARKERS = re.compile(r"\s*\[(?:header|title|step|substeps)\]\s*")
BOOLQ_CANDIDATES = ("no", "yes")                      # label 1 = true
CB_LABELS = ("entailment", "contradiction", "neutral")
CB_CANDIDATES = ("True", "False", "Neither")
COPA_CONNECTIVES = {"cause": "because", "effect": "so"}


class Malformed(ValueError):
  """A record that lacks what the benchmark needs (skipped and counted, not fatal)."""


class Unlabelled(ValueError):
  """A record without its answer (a hidden test set): skipped as `missing_label`."""


def _record(record_id: Any, prompt: str, candidates: Sequence[str], label: Any) -> dict:
  candidates = [str(c).strip() for c in candidates]
  label = int(label)
  if not 0 <= label < len(candidates):
    raise Malformed(f"label {label} is not the index of one of {len(candidates)} candidates")
  if not all(candidates):
    raise Malformed("an empty candidate")
  return {"id": str(record_id), "prompt": prompt.strip(), "references": [candidates[label]],
          "candidates": candidates, "label": label}


def _register_jsonl(reader: str, macro: str, expects: str, root: str,
                    files: Mapping[str, Sequence[str]],
                    parse: Callable[[dict, int], dict], name: str,
                    spec: eval_tasks.EvalSpec, spec_overrides) -> str:
  """A benchmark whose split `s` is the first existing file of `files[s]` in `root`, one json
  object per line, turned into a record by `parse(obj, line_number)`."""
  root_arg = PathArg(reader, "root", macro, expects)

  def build(split, skips):
    folder = common.require_path(root, root_arg, directory=True)
    path = common.find_file(folder, files[split], root_arg, split)
    records = []
    for number, obj in common.read_jsonl(path, skips):
      where = f"{os.path.basename(path)}:{number}"
      try:
        records.append(parse(obj, number))
      except Unlabelled:
        skips.skip("missing_label", where)
      except (KeyError, TypeError, ValueError, AttributeError) as e:
        skips.skip("malformed_record", f"{where}: {type(e).__name__} {e}")
    return records, None
  return common.register(name, tuple(files), build,
                         spec=common.spec_with(spec, spec_overrides, reader),
                         metric_fns=[metrics_lib.rank_accuracy], image_size=None)


def _label(obj: dict, key: str) -> Any:
  if key not in obj or obj[key] in ("", None):
    raise Unlabelled()
  return obj[key]


# ----------------------------------------------------------------------------- HellaSwag

def _clean_wikihow(text: str) -> str:
  """HellaSwag's WikiHow contexts carry `[header]`, `[title]`, `[step]` markers; drop them."""
  return " ".join(_WIKIHOW_MARKERS.sub(" ", text).split())


def _parse_hellaswag(obj: dict, number: int) -> dict:
  ctx = obj["ctx"] if "ctx" in obj else f"{obj['ctx_a']} {obj['ctx_b']}"
  activity = str(obj.get("activity_label", "")).strip()
  prompt = _clean_wikihow(f"{activity}: {ctx}" if activity else str(ctx))
  endings = obj["endings"]
  if not isinstance(endings, list) or len(endings) < 2:
    raise Malformed(f"endings should be a list of 4, got {endings!r}")
  label = _label(obj, "label")
  return _record(obj.get("ind", number), prompt, [_clean_wikihow(str(e)) for e in endings],
                 label)


def hellaswag(root: str, *, name: str = "hellaswag",
              spec_overrides: Optional[Mapping[str, Any]] = None) -> str:
  """HellaSwag: `hellaswag_{train,val}.jsonl` (`{"ind", "activity_label", "ctx", "endings",
  "label"}`) in root. Splits: train, validation (the paper's: test labels are hidden)."""
  return _register_jsonl(
      "hellaswag", "HELLASWAG_ROOT", "the folder holding hellaswag_train.jsonl and "
      "hellaswag_val.jsonl", root,
      {"train": ("hellaswag_train.jsonl", "train.jsonl"),
       "validation": ("hellaswag_val.jsonl", "val.jsonl", "validation.jsonl")},
      _parse_hellaswag, name, SCORE_SPEC, spec_overrides)


# ----------------------------------------------------------------------------- PIQA

PIQA_FILES = {"train": ("train.jsonl", "train-labels.lst"),
              "validation": ("valid.jsonl", "valid-labels.lst")}


def piqa(root: str, *, name: str = "piqa",
         spec_overrides: Optional[Mapping[str, Any]] = None) -> str:
  """PIQA as released: `{train,valid}.jsonl` (`{"goal", "sol1", "sol2"}`) with the answers in
  `{train,valid}-labels.lst`, one 0/1 per line, line i for question i. Splits: train,
  validation (the paper's: test labels are hidden). Prompt: the goal; candidates: sol1, sol2.
  Files whose line counts differ are an error (they would pair questions with wrong answers).
  """
  reader = "piqa"
  root_arg = PathArg(reader, "root", "PIQA_ROOT",
                     "the folder holding train.jsonl, train-labels.lst, valid.jsonl and "
                     "valid-labels.lst")

  def build(split, skips):
    folder = common.require_path(root, root_arg, directory=True)
    questions_name, labels_name = PIQA_FILES[split]
    questions_path = common.find_file(folder, [questions_name], root_arg, split)
    labels_path = common.find_file(folder, [labels_name], root_arg, split)
    with open(questions_path, encoding="utf-8") as f:
      lines = f.read().splitlines()
    with open(labels_path, encoding="utf-8") as f:
      labels = f.read().splitlines()
    while lines and not lines[-1].strip():
      lines.pop()
    while labels and not labels[-1].strip():
      labels.pop()
    if len(lines) != len(labels):
      raise ValueError(f"{reader}: {questions_path!r} has {len(lines)} lines but "
                       f"{labels_path!r} has {len(labels)} labels; use the files of one "
                       f"release together")
    records = []
    for number, (line, label) in enumerate(zip(lines, labels), 1):
      where = f"{questions_name}:{number}"
      objs = list(common.parse_jsonl_lines([line], questions_name, skips, first_line=number))
      if not objs:
        continue
      _, obj = objs[0]
      try:
        records.append(_record(obj.get("id", number), str(obj["goal"]),
                               [obj["sol1"], obj["sol2"]], label.strip()))
      except (KeyError, TypeError, ValueError) as e:
        skips.skip("malformed_record", f"{where}: {type(e).__name__} {e}")
    return records, None
  return common.register(name, tuple(PIQA_FILES), build,
                         spec=common.spec_with(SCORE_SPEC, spec_overrides, reader),
                         metric_fns=[metrics_lib.rank_accuracy], image_size=None)


# ----------------------------------------------------------------------------- SuperGLUE

def _parse_copa(obj: dict, number: int) -> dict:
  connective = COPA_CONNECTIVES.get(obj["question"])
  if connective is None:
    raise Malformed(f"question {obj['question']!r} is neither 'cause' nor 'effect'")
  premise = str(obj["premise"]).strip()
  premise = premise[:-1] if premise.endswith(".") else premise
  label = _label(obj, "label")
  return _record(obj.get("idx", number), f"{premise} {connective}",
                 [common.lower_first(str(obj["choice1"])),
                  common.lower_first(str(obj["choice2"]))], label)


def copa(root: str, *, name: str = "copa",
         spec_overrides: Optional[Mapping[str, Any]] = None) -> str:
  """COPA from SuperGLUE: `{train,val}.jsonl` (`{"premise", "choice1", "choice2", "question":
  "cause"|"effect", "label", "idx"}`). Prompt: the premise without its final period, then
  " because" (cause) or " so" (effect); candidates: the choices, first letter lowercased.
  Splits: train, validation (the paper's: test labels are hidden)."""
  return _register_jsonl("copa", "COPA_ROOT", "SuperGLUE's COPA folder (train.jsonl, val.jsonl)",
                         root, {"train": ("train.jsonl",), "validation": ("val.jsonl",)},
                         _parse_copa, name, SCORE_SPEC, spec_overrides)


def _parse_boolq(obj: dict, number: int) -> dict:
  key = "label" if "label" in obj else "answer"
  value = _label(obj, key)
  if isinstance(value, str):
    if value.lower() not in ("true", "false"):
      raise Malformed(f"{key} {value!r} is not true/false")
    value = value.lower() == "true"
  if value not in (True, False, 0, 1):
    raise Malformed(f"{key} {value!r} is not a boolean")
  question = str(obj["question"]).strip()
  question = question if question.endswith("?") else question + "?"
  prompt = f"{str(obj['passage']).strip()} Question: {question} Answer:"
  return _record(obj.get("idx", number), prompt, BOOLQ_CANDIDATES, int(bool(value)))


def boolq(root: str, *, name: str = "boolq",
          spec_overrides: Optional[Mapping[str, Any]] = None) -> str:
  """BoolQ from SuperGLUE (`{train,val}.jsonl`, `{"passage", "question", "label": bool}`) or
  the original release (`{train,dev}.jsonl`, `{"question", "passage", "answer": bool}`).
  Prompt `{passage} Question: {question}? Answer:`, candidates ["no", "yes"].
  Splits: train, validation (the paper's)."""
  return _register_jsonl("boolq", "BOOLQ_ROOT", "the folder holding train.jsonl and val.jsonl "
                         "(SuperGLUE) or dev.jsonl (original)", root,
                         {"train": ("train.jsonl",), "validation": ("val.jsonl", "dev.jsonl")},
                         _parse_boolq, name, SCORE_SPEC, spec_overrides)


def _parse_cb(obj: dict, number: int) -> dict:
  label = _label(obj, "label")
  if label not in CB_LABELS:
    raise Malformed(f"label {label!r} is not one of {CB_LABELS}")
  prompt = (f"{str(obj['premise']).strip()} Question: {str(obj['hypothesis']).strip()} True, "
            "False or Neither? Answer:")
  return _record(obj.get("idx", number), prompt, CB_CANDIDATES, CB_LABELS.index(label))


def cb(root: str, *, name: str = "cb",
       spec_overrides: Optional[Mapping[str, Any]] = None) -> str:
  """CommitmentBank from SuperGLUE: `{train,val}.jsonl` (`{"premise", "hypothesis", "label":
  "entailment"|"contradiction"|"neutral"}`); candidates ["True", "False", "Neither"] in that
  order. Splits: train, validation (the paper's)."""
  return _register_jsonl("cb", "CB_ROOT", "SuperGLUE's CB folder (train.jsonl, val.jsonl)", root,
                         {"train": ("train.jsonl",), "validation": ("val.jsonl",)},
                         _parse_cb, name, SCORE_SPEC, spec_overrides)


# ----------------------------------------------------------------------------- Winogrande

def _parse_winogrande(obj: dict, number: int) -> dict:
  sentence = str(obj["sentence"])
  if sentence.count("_") != 1:
    raise Malformed(f"sentence should have exactly one '_' blank: {sentence!r}")
  prefix, suffix = sentence.split("_")
  answer = str(_label(obj, "answer")).strip()
  if answer not in ("1", "2"):
    raise Malformed(f"answer {answer!r} is not '1' or '2'")
  options = [str(obj["option1"]).strip(), str(obj["option2"]).strip()]
  return _record(obj.get("qID", number), prefix, [o + suffix.rstrip() for o in options],
                 int(answer) - 1)


def winogrande(root: str, *, name: str = "winogrande", train_size: str = "xl",
               spec_overrides: Optional[Mapping[str, Any]] = None) -> str:
  """Winogrande 1.1: `train_{xs,s,m,l,xl}.jsonl` and `dev.jsonl` (`{"qID", "sentence" with one
  "_", "option1", "option2", "answer": "1"|"2"}`). The prompt is the sentence up to the blank
  and each candidate an option followed by the rest of the sentence, so both candidates are
  scored after the same context. Splits: train (`train_{train_size}.jsonl`), validation
  (`dev.jsonl`, the paper's: test labels are hidden)."""
  return _register_jsonl("winogrande", "WINOGRANDE_ROOT", "the folder holding train_xl.jsonl "
                         "and dev.jsonl", root,
                         {"train": (f"train_{train_size}.jsonl", "train.jsonl"),
                          "validation": ("dev.jsonl",)},
                         _parse_winogrande, name, SCORE_SPEC, spec_overrides)


# ----------------------------------------------------------------------------- StoryCloze

STORYCLOZE_FILES = {
    "validation": ("cloze_test_val__spring2016 - cloze_test_ALL_val.csv", "val.csv",
                   "validation.csv"),
    "test": ("cloze_test_test__spring2016 - cloze_test_ALL_test.csv", "test.csv"),
}
STORYCLOZE_SUFFIXES = {"validation": "_val.csv", "test": "_test.csv"}


def storycloze(root: str, *, name: str = "storycloze",
               spec_overrides: Optional[Mapping[str, Any]] = None) -> str:
  """StoryCloze (2016 release): csv files with columns InputStoryid, InputSentence1..4,
  RandomFifthSentenceQuiz1, RandomFifthSentenceQuiz2, AnswerRightEnding (1|2).
  Splits: validation (`... cloze_test_ALL_val.csv`; also the demonstrations: there is no train
  set with two endings), test (`... cloze_test_ALL_test.csv`, the paper's)."""
  reader = "storycloze"
  root_arg = PathArg(reader, "root", "STORYCLOZE_ROOT",
                     "the folder holding the spring 2016 cloze_test_ALL_{val,test}.csv files")

  def build(split, skips):
    folder = common.require_path(root, root_arg, directory=True)
    names = list(STORYCLOZE_FILES[split]) + sorted(
        n for n in os.listdir(folder) if n.endswith(STORYCLOZE_SUFFIXES[split]))
    path = common.find_file(folder, names, root_arg, split)
    records = []
    for number, row in enumerate(common.read_csv(path), 2):     # line 1 is the header
      try:
        story = " ".join(str(row[f"InputSentence{i}"]).strip() for i in range(1, 5))
        endings = [row["RandomFifthSentenceQuiz1"], row["RandomFifthSentenceQuiz2"]]
        if not str(row.get("AnswerRightEnding") or "").strip():
          skips.skip("missing_label", f"{os.path.basename(path)}:{number}")
          continue
        records.append(_record(row.get("InputStoryid") or number, story, endings,
                               int(row["AnswerRightEnding"]) - 1))
      except (KeyError, TypeError, ValueError) as e:
        skips.skip("malformed_record", f"{os.path.basename(path)}:{number}: "
                   f"{type(e).__name__} {e}")
    return records, None
  spec = eval_tasks.EvalSpec(mode="score", score_normalization="mean", demo_split="validation")
  return common.register(name, tuple(STORYCLOZE_FILES), build,
                         spec=common.spec_with(spec, spec_overrides, reader),
                         metric_fns=[metrics_lib.rank_accuracy], image_size=None)
