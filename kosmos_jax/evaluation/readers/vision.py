"""Readers of the image benchmarks of Kosmos-1 (docs/evaluation.md §4), in their official layouts.

  coco_karpathy_captions / flickr30k_karpathy_captions   `<image> An image of` -> caption;
      beam 5; CIDEr-D, BLEU-4
  vqav2 / vizwiz          `<image> Question: {question} Answer:` -> answer; greedy; VQA accuracy
  hateful_memes           `<image> Question: does this picture contain real hate speech?
                          Answer:` scored with candidates ["no", "yes"]; ROC AUC
  rendered_sst2(_cot)     `<image> Question: what is the sentiment of the opinion? Answer:`
                          scored with ["negative", "positive"]; accuracy (the CoT variant first
                          generates a rationale after `Introduce this picture in detail:`)
  imagenet                `<image> The photo of the` -> class name; beam 2, constrained to the
                          class names or not; exact match

Each function registers one eval task and returns its name; nothing is read until a split's
dataset is built. Every prompt ends where the answer starts, and `references[0]` is the answer a
k-shot demonstration shows.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping, Optional, Sequence

from kosmos_jax.evaluation import metrics as metrics_lib
from kosmos_jax.evaluation import tasks as eval_tasks
from kosmos_jax.evaluation.readers import common
from kosmos_jax.evaluation.readers.common import IMAGE, PathArg

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")

CAPTION_PROMPT = f"{IMAGE} An image of"
VQA_PROMPT = IMAGE + " Question: {question} Answer:"
HATEFUL_MEMES_PROMPT = f"{IMAGE} Question: does this picture contain real hate speech? Answer:"
SST2_PROMPT = f"{IMAGE} Question: what is the sentiment of the opinion? Answer:"
COT_RATIONALE_PROMPT = "Introduce this picture in detail:"
IMAGENET_PROMPT = f"{IMAGE} The photo of the"

# Decoding as in the paper: beam 5 for captions, greedy for VQA, beam 2 for ImageNet.
CAPTION_SPEC = eval_tasks.EvalSpec(mode="generate", strategy="beam", beam_size=5,
                                   max_new_tokens=30, postprocess="first_line")
VQA_SPEC = eval_tasks.EvalSpec(mode="generate", strategy="greedy", max_new_tokens=10,
                               postprocess="first_line")
BINARY_SCORE_SPEC = eval_tasks.EvalSpec(mode="score", score_normalization="mean")

# Karpathy's `split` values that make up each eval split: "train" is the 113,287-image training
# set of the paper (Karpathy train + restval); demonstrations come from it.
KARPATHY_SPLITS = {"train": ("train", "restval"), "validation": ("val",), "test": ("test",)}
VQAV2_SUBTYPES = {"train": "train2014", "validation": "val2014"}
VIZWIZ_SPLITS = {"train": "train", "validation": "val"}
HATEFUL_MEMES_FILES = {
    "train": ("train.jsonl",),
    "validation": ("dev_seen.jsonl", "dev.jsonl"),       # final release, phase-1 release
    "validation_unseen": ("dev_unseen.jsonl",),
    "test": ("test_seen.jsonl", "test.jsonl"),
    "test_unseen": ("test_unseen.jsonl",),
}
HATEFUL_MEMES_CANDIDATES = ("no", "yes")                 # index 1 = hateful (label 1)
SST2_DIRS = {"train": ("train",), "validation": ("valid", "validation", "val", "dev"),
             "test": ("test",)}
SST2_CLASSES = ("negative", "positive")                  # label 1 = positive
IMAGENET_DIRS = {"train": ("train",), "validation": ("val", "validation")}
_WNID = re.compile(r"^n\d{8}$")


# ----------------------------------------------------------------------------- captions

def _karpathy(reader: str, annotations: str, image_root: str, macros: tuple[str, str],
              name: str, image_size: int, spec_overrides) -> str:
  ann_arg = PathArg(reader, "annotations", macros[0],
                    "Karpathy's split file (dataset_coco.json / dataset_flickr30k.json)")
  root_arg = PathArg(reader, "image_root", macros[1],
                     "the image folder the file's `filepath`/`filename` are relative to")

  def build(split, skips):
    ann_path = common.require_path(annotations, ann_arg, directory=False)
    root = common.require_path(image_root, root_arg, directory=True)
    data = common.read_json(ann_path, ann_arg)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
      raise ValueError(f"{reader}: {ann_path!r} has no 'images' list; {ann_arg.hint()}")
    wanted, checker, records = KARPATHY_SPLITS[split], common.ImageChecker(), []
    for i, entry in enumerate(images):
      try:
        if entry["split"] not in wanted:
          continue
        filename = entry["filename"]
        relative = os.path.join(entry.get("filepath", ""), filename)
        captions = [common.lower_first(s["raw"]) for s in entry["sentences"]]
        image_id = entry.get("cocoid", os.path.splitext(filename)[0])
      except (KeyError, TypeError, AttributeError) as e:
        skips.skip("malformed_record", f"images[{i}]: {type(e).__name__} {e}")
        continue
      captions = [c for c in captions if c]
      if not captions:
        skips.skip("malformed_record", f"images[{i}] ({filename}): no captions")
        continue
      path = os.path.join(root, relative)
      if not checker.exists(path):
        skips.skip("missing_image", path)
        continue
      records.append({"id": str(image_id), "prompt": CAPTION_PROMPT, "image_paths": [path],
                      "references": captions})
    return records, None
  return common.register(name, tuple(KARPATHY_SPLITS), build,
                         spec=common.spec_with(CAPTION_SPEC, spec_overrides, reader),
                         metric_fns=[metrics_lib.coco_caption_metrics], image_size=image_size)


def coco_karpathy_captions(annotations: str, image_root: str, *,
                           name: str = "coco_karpathy_captions",
                           image_size: int = common.DEFAULT_IMAGE_SIZE,
                           spec_overrides: Optional[Mapping[str, Any]] = None) -> str:
  """COCO captions on Karpathy's splits (test: 5,000 images, 5 captions each).

  annotations: `dataset_coco.json`; image_root: the COCO 2014 folder holding `train2014/` and
  `val2014/` (records name `{filepath}/{filename}`). Splits: train (train + restval, 113,287),
  validation, test. References are the raw captions with the first letter lowercased (a no-op
  for the metrics, whose PTB tokenizer lowercases) so that a demonstration reads
  `<image> An image of a man riding a horse.`.
  """
  return _karpathy("coco_karpathy_captions", annotations, image_root,
                   ("COCO_KARPATHY_JSON", "COCO_IMAGE_ROOT"), name, image_size, spec_overrides)


def flickr30k_karpathy_captions(annotations: str, image_root: str, *,
                                name: str = "flickr30k_karpathy_captions",
                                image_size: int = common.DEFAULT_IMAGE_SIZE,
                                spec_overrides: Optional[Mapping[str, Any]] = None) -> str:
  """Flickr30k captions on Karpathy's splits (test: 1,000 images): `dataset_flickr30k.json`
  and the `flickr30k-images/` folder. Same prompt, decoding and references as COCO."""
  return _karpathy("flickr30k_karpathy_captions", annotations, image_root,
                   ("FLICKR30K_KARPATHY_JSON", "FLICKR30K_IMAGE_ROOT"), name, image_size,
                   spec_overrides)


# ----------------------------------------------------------------------------- VQA

def _vqa_references(answers: Sequence[str], first: Optional[str]) -> list[str]:
  """The annotators' answers, the demonstration answer first (a permutation: same accuracy)."""
  answers = [str(a) for a in answers]
  if len(answers) < 2:
    raise ValueError(f"{len(answers)} annotator answers; VQA accuracy needs several (10)")
  return common.rotate_first(answers, first if first in answers else common.most_common(answers))


def vqav2(root: str, image_root: str, *, name: str = "vqav2",
          image_size: int = common.DEFAULT_IMAGE_SIZE,
          spec_overrides: Optional[Mapping[str, Any]] = None) -> str:
  """VQAv2 from the official files.

  root: folder with `v2_OpenEnded_mscoco_{train,val}2014_questions.json` and
  `v2_mscoco_{train,val}2014_annotations.json`; image_root: the COCO 2014 folder with
  `train2014/COCO_train2014_{image_id:012d}.jpg` and `val2014/...` (the images may also lie
  directly in image_root). Splits: train, validation (val2014). The paper reports test-dev,
  whose answers are only on the evaluation server, so it is not a split here.
  References: the 10 answers, `multiple_choice_answer` first (the k-shot demonstration).
  """
  reader = "vqav2"
  root_arg = PathArg(reader, "root", "VQAV2_ROOT", "the folder holding "
                     "v2_OpenEnded_mscoco_{train,val}2014_questions.json and "
                     "v2_mscoco_{train,val}2014_annotations.json")
  image_arg = PathArg(reader, "image_root", "COCO_IMAGE_ROOT",
                      "the COCO 2014 image folder holding train2014/ and val2014/")

  def build(split, skips):
    folder = common.require_path(root, root_arg, directory=True)
    images = common.require_path(image_root, image_arg, directory=True)
    subtype = VQAV2_SUBTYPES[split]
    questions_path = common.find_file(
        folder, [f"v2_OpenEnded_mscoco_{subtype}_questions.json"], root_arg, split)
    annotations_path = common.find_file(
        folder, [f"v2_mscoco_{subtype}_annotations.json"], root_arg, split)
    questions = common.read_json(questions_path, root_arg)
    annotations = common.read_json(annotations_path, root_arg)
    if not (isinstance(questions, dict) and isinstance(questions.get("questions"), list)):
      raise ValueError(f"{reader}: {questions_path!r} has no 'questions' list; "
                       f"{root_arg.hint()}")
    if not (isinstance(annotations, dict) and isinstance(annotations.get("annotations"), list)):
      raise ValueError(f"{reader}: {annotations_path!r} has no 'annotations' list; "
                       f"{root_arg.hint()}")
    by_question = {}
    for i, ann in enumerate(annotations["annotations"]):
      try:
        by_question[ann["question_id"]] = ann
      except (KeyError, TypeError) as e:
        skips.skip("malformed_record", f"annotations[{i}]: {type(e).__name__} {e}")
    checker, records = common.ImageChecker(), []
    for i, q in enumerate(questions["questions"]):
      try:
        question_id, image_id = q["question_id"], int(q["image_id"])
        text = str(q["question"]).strip()
        if question_id not in by_question:
          skips.skip("missing_label", f"question {question_id} has no annotation")
          continue
        ann = by_question[question_id]
        references = _vqa_references([a["answer"] for a in ann["answers"]],
                                     ann.get("multiple_choice_answer"))
      except (KeyError, TypeError, ValueError) as e:
        skips.skip("malformed_record", f"questions[{i}]: {type(e).__name__} {e}")
        continue
      filename = f"COCO_{subtype}_{image_id:012d}.jpg"
      path = os.path.join(images, subtype, filename)
      if not checker.exists(path):
        flat = os.path.join(images, filename)
        if not checker.exists(flat):
          skips.skip("missing_image", path)
          continue
        path = flat
      records.append({"id": str(question_id), "prompt": VQA_PROMPT.format(question=text),
                      "image_paths": [path], "references": references})
    return records, None
  return common.register(name, tuple(VQAV2_SUBTYPES), build,
                         spec=common.spec_with(VQA_SPEC, spec_overrides, reader),
                         metric_fns=[metrics_lib.vqa_accuracy], image_size=image_size)


def vizwiz(root: str, image_root: Optional[str] = None, *, name: str = "vizwiz",
           image_size: int = common.DEFAULT_IMAGE_SIZE,
           spec_overrides: Optional[Mapping[str, Any]] = None) -> str:
  """VizWiz-VQA from the official release.

  root: folder with `train.json` and `val.json` (or `Annotations/train.json`, ...): lists of
  `{"image", "question", "answers": [{"answer", "answer_confidence"}] x10, "answerable"}`;
  image_root (default: root): folder with `train/` and `val/` image folders (or the images
  themselves). Splits: train, validation. The paper reports test-dev (evaluation server only).
  References: the 10 answers, the most frequent first ("unanswerable" is an answer too).
  """
  reader = "vizwiz"
  root_arg = PathArg(reader, "root", "VIZWIZ_ROOT",
                     "the folder holding train.json and val.json (or Annotations/*.json)")
  image_arg = PathArg(reader, "image_root", "VIZWIZ_ROOT",
                      "the folder holding the train/ and val/ image folders")

  def build(split, skips):
    folder = common.require_path(root, root_arg, directory=True)
    images = common.require_path(image_root or folder, image_arg, directory=True)
    stem = VIZWIZ_SPLITS[split]
    path = common.find_file(folder, [f"{stem}.json", os.path.join("Annotations", f"{stem}.json")],
                            root_arg, split)
    entries = common.read_json(path, root_arg)
    if not isinstance(entries, list):
      raise ValueError(f"{reader}: {path!r} should hold a json list of questions; "
                       f"{root_arg.hint()}")
    checker, records = common.ImageChecker(), []
    for i, entry in enumerate(entries):
      try:
        image = str(entry["image"])
        text = str(entry["question"]).strip()
        references = _vqa_references([a["answer"] for a in entry["answers"]], None)
      except (KeyError, TypeError, ValueError) as e:
        skips.skip("malformed_record", f"[{i}]: {type(e).__name__} {e}")
        continue
      image_path = os.path.join(images, stem, image)
      if not checker.exists(image_path):
        flat = os.path.join(images, image)
        if not checker.exists(flat):
          skips.skip("missing_image", image_path)
          continue
        image_path = flat
      records.append({"id": os.path.splitext(image)[0],
                      "prompt": VQA_PROMPT.format(question=text),
                      "image_paths": [image_path], "references": references})
    return records, None
  return common.register(name, tuple(VIZWIZ_SPLITS), build,
                         spec=common.spec_with(VQA_SPEC, spec_overrides, reader),
                         metric_fns=[metrics_lib.vqa_accuracy], image_size=image_size)


# ----------------------------------------------------------------------------- OCR-free

def hateful_memes(root: str, *, name: str = "hateful_memes",
                  image_size: int = common.DEFAULT_IMAGE_SIZE,
                  spec_overrides: Optional[Mapping[str, Any]] = None) -> str:
  """HatefulMemes from the official release: `{root}/{split}.jsonl` lines
  `{"id", "img": "img/42953.png", "label": 0|1, "text"}` with `img` relative to root.

  Splits: train, validation (dev_seen.jsonl, or dev.jsonl of the first release; the paper's
  split), validation_unseen, test (test_seen.jsonl / test.jsonl), test_unseen. The meme text is
  not given: the model reads it from the pixels (OCR-free). Scored by likelihood of the
  candidates ["no", "yes"]; ROC AUC uses log p("yes") - log p("no"). Unlabelled records
  (the first release's test.jsonl) are skipped as `missing_label`.
  """
  reader = "hateful_memes"
  root_arg = PathArg(reader, "root", "HATEFUL_MEMES_ROOT",
                     "the folder holding train.jsonl, dev_seen.jsonl, ... and img/")

  def build(split, skips):
    folder = common.require_path(root, root_arg, directory=True)
    path = common.find_file(folder, HATEFUL_MEMES_FILES[split], root_arg, split)
    checker, records = common.ImageChecker(), []
    for number, obj in common.read_jsonl(path, skips):
      where = f"{os.path.basename(path)}:{number}"
      if "label" not in obj:
        skips.skip("missing_label", where)
        continue
      try:
        image, label = str(obj["img"]), int(obj["label"])
        if label not in (0, 1):
          raise ValueError(f"label {label} is not 0 or 1")
        record_id = str(obj["id"])
      except (KeyError, TypeError, ValueError) as e:
        skips.skip("malformed_record", f"{where}: {type(e).__name__} {e}")
        continue
      image_path = os.path.join(folder, image)
      if not checker.exists(image_path):
        skips.skip("missing_image", image_path)
        continue
      records.append({"id": record_id, "prompt": HATEFUL_MEMES_PROMPT,
                      "image_paths": [image_path],
                      "references": [HATEFUL_MEMES_CANDIDATES[label]],
                      "candidates": list(HATEFUL_MEMES_CANDIDATES), "label": label})
    return records, None
  return common.register(name, tuple(HATEFUL_MEMES_FILES), build,
                         spec=common.spec_with(BINARY_SCORE_SPEC, spec_overrides, reader),
                         metric_fns=[metrics_lib.binary_choice_auc, metrics_lib.rank_accuracy],
                         image_size=image_size)


def _image_files(folder: str, skips, where: str) -> list[str]:
  """Sorted image files of a folder; other non-hidden files are counted as skipped."""
  out = []
  for entry in sorted(os.scandir(folder), key=lambda e: e.name):
    if entry.name.startswith(".") or entry.is_dir():
      continue
    if entry.name.lower().endswith(IMAGE_EXTENSIONS):
      out.append(entry.path)
    else:
      skips.skip("not_an_image_file", os.path.join(where, entry.name))
  return out


def _round_robin(per_class: Sequence[Sequence[Any]]) -> list[Any]:
  """One item of each class in turn, so that the first records of a split (the evaluator's
  pool of k-shot demonstrations) cover every class instead of only the first one."""
  out = []
  for i in range(max((len(items) for items in per_class), default=0)):
    out.extend(items[i] for items in per_class if i < len(items))
  return out


def _rendered_sst2(name: str, root: str, image_size: int, spec: eval_tasks.EvalSpec,
                   reader: str) -> str:
  root_arg = PathArg(reader, "root", "RENDERED_SST2_ROOT",
                     "the folder holding {train,valid,test}/{negative,positive}/*.png")

  def build(split, skips):
    folder = common.require_path(root, root_arg, directory=True)
    split_dir = common.find_dir(folder, SST2_DIRS[split], root_arg, split)
    per_class = []
    for label, cls in enumerate(SST2_CLASSES):
      class_dir = common.find_dir(split_dir, [cls], root_arg, split)
      per_class.append([(label, cls, path) for path in
                        _image_files(class_dir, skips, os.path.join(split, cls))])
    records = [{"id": f"{cls}/{os.path.splitext(os.path.basename(path))[0]}",
                "prompt": SST2_PROMPT, "image_paths": [path], "references": [cls],
                "candidates": list(SST2_CLASSES), "label": label}
               for label, cls, path in _round_robin(per_class)]
    return records, None
  return common.register(name, tuple(SST2_DIRS), build, spec=spec,
                         metric_fns=[metrics_lib.rank_accuracy], image_size=image_size)


def rendered_sst2(root: str, *, name: str = "rendered_sst2",
                  image_size: int = common.DEFAULT_IMAGE_SIZE,
                  spec_overrides: Optional[Mapping[str, Any]] = None) -> str:
  """Rendered SST-2 (CLIP's release): `{root}/{train,valid,test}/{negative,positive}/*.png`.

  Splits: train, validation (`valid/`), test (the paper's). Scored by likelihood of
  ["negative", "positive"] after the sentiment question; accuracy. Records alternate between
  the classes (see `_round_robin`).
  """
  return _rendered_sst2(name, root, image_size,
                        common.spec_with(BINARY_SCORE_SPEC, spec_overrides, "rendered_sst2"),
                        "rendered_sst2")


def rendered_sst2_cot(root: str, *, name: str = "rendered_sst2_cot",
                      image_size: int = common.DEFAULT_IMAGE_SIZE,
                      spec_overrides: Optional[Mapping[str, Any]] = None) -> str:
  """Rendered SST-2 with two-stage multimodal chain of thought (paper §4.5): the model first
  generates a rationale after `<image> Introduce this picture in detail:`, which is put before
  the question; then the candidates are scored as in `rendered_sst2`."""
  spec = eval_tasks.EvalSpec(mode="score", score_normalization="mean",
                             rationale_prompt=COT_RATIONALE_PROMPT)
  return _rendered_sst2(name, root, image_size,
                        common.spec_with(spec, spec_overrides, "rendered_sst2_cot"),
                        "rendered_sst2_cot")


# ----------------------------------------------------------------------------- ImageNet

def _clean_name(name: str) -> str:
  return " ".join(str(name).replace("_", " ").split())


def read_class_names(path: str, class_dirs: Sequence[str], where: PathArg) -> dict[str, str]:
  """{class folder: class name} from one of the usual mapping files.

  - `LOC_synset_mapping.txt` lines `n01440764 tench, Tinca tinca`: the first synonym ("tench");
  - a json `{folder: name}` or `{folder: [name, synonym, ...]}`;
  - Keras' `imagenet_class_index.json`, `{"0": ["n01440764", "tench"], ...}`;
  - a text file with one name per line, for the class folders in sorted order.
  Underscores become spaces ("great_white_shark" -> "great white shark").
  """
  with open(path, encoding="utf-8") as f:
    text = f.read()
  if path.lower().endswith(".json"):
    try:
      data = json.loads(text)
    except json.JSONDecodeError as e:
      raise ValueError(f"{where.reader}: {path!r} is not valid json ({e}); {where.hint()}") from e
    if not isinstance(data, dict) or not data:
      raise ValueError(f"{where.reader}: {path!r} should be a json object mapping class folders "
                       f"to names; {where.hint()}")
    values = list(data.values())
    if all(isinstance(v, list) and len(v) == 2 and _WNID.match(str(v[0])) for v in values):
      return {str(v[0]): _clean_name(v[1]) for v in values}
    names = {}
    for key, value in data.items():
      value = value[0] if isinstance(value, list) and value else value
      if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where.reader}: {path!r}: class {key!r} has no name ({value!r}); "
                         f"{where.hint()}")
      names[str(key)] = _clean_name(value)
    return names
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if lines and all(_WNID.match(line.split()[0]) and len(line.split()) > 1 for line in lines):
    return {line.split()[0]: _clean_name(line.split(None, 1)[1].split(",")[0])
            for line in lines}
  if len(lines) != len(class_dirs):
    raise ValueError(f"{where.reader}: {path!r} has {len(lines)} names, one per line, but there "
                     f"are {len(class_dirs)} class folders; give one name per sorted class "
                     f"folder, or a LOC_synset_mapping.txt / json mapping; {where.hint()}")
  return {d: _clean_name(line) for d, line in zip(sorted(class_dirs), lines)}


def imagenet(root: str, class_names: str, *, constrained: bool = True,
             name: Optional[str] = None, image_size: int = common.DEFAULT_IMAGE_SIZE,
             spec_overrides: Optional[Mapping[str, Any]] = None) -> str:
  """ImageNet-style class folders, zero-shot classification by generation (paper §4.6).

  root: folder with `{train,val}/{class folder}/*.JPEG` (the validation images sorted into
  class folders, as most copies are); class_names: a mapping file (`read_class_names`).
  Splits: train, validation (`val/`, the paper's 50,000 images). `<image> The photo of the`
  -> class name with beam 2; exact match with the class name. `constrained` decodes only the
  class names (every record's `candidates` are all of them, in mapping order, duplicates
  removed); otherwise decoding is free and the prediction is cut at the first period.
  Task name: "imagenet_constrained" or "imagenet_unconstrained" unless `name` is given.
  Records alternate between classes (see `_round_robin`).
  """
  reader = "imagenet"
  name = name or ("imagenet_constrained" if constrained else "imagenet_unconstrained")
  root_arg = PathArg(reader, "root", "IMAGENET_ROOT",
                     "the folder holding train/ and val/, each with one folder per class")
  names_arg = PathArg(reader, "class_names", "IMAGENET_CLASS_NAMES",
                      "a class-name file such as LOC_synset_mapping.txt")

  def build(split, skips):
    folder = common.require_path(root, root_arg, directory=True)
    names_path = common.require_path(class_names, names_arg, directory=False)
    split_dir = common.find_dir(folder, IMAGENET_DIRS[split], root_arg, split)
    class_dirs = sorted(e.name for e in os.scandir(split_dir)
                        if e.is_dir() and not e.name.startswith("."))
    if not class_dirs:
      raise FileNotFoundError(f"{reader}: {split_dir!r} has no class folders; "
                              f"{root_arg.hint()}")
    mapping = read_class_names(names_path, class_dirs, names_arg)
    unknown = [d for d in class_dirs if d not in mapping]
    if unknown:
      raise ValueError(f"{reader}: {len(unknown)} class folders of {split_dir!r} are not in "
                       f"{names_path!r} (e.g. {unknown[:3]}); the file must name every class "
                       f"folder")
    candidates = list(dict.fromkeys(mapping.values()))
    label_of = {c: i for i, c in enumerate(candidates)}
    per_class = [[(d, path) for path in _image_files(os.path.join(split_dir, d), skips,
                                                    os.path.join(split, d))]
                 for d in class_dirs]
    records = []
    for class_dir, path in _round_robin(per_class):
      class_name = mapping[class_dir]
      records.append({"id": f"{class_dir}/{os.path.splitext(os.path.basename(path))[0]}",
                      "prompt": IMAGENET_PROMPT, "image_paths": [path],
                      "references": [class_name], "label": label_of[class_name]})
    return records, (candidates if constrained else None)
  spec = eval_tasks.EvalSpec(
      mode="generate", strategy="beam", beam_size=2, max_new_tokens=16,
      constrained=bool(constrained), postprocess="strip" if constrained else "first_sentence")
  return common.register(name, tuple(IMAGENET_DIRS), build,
                         spec=common.spec_with(spec, spec_overrides, reader),
                         metric_fns=[metrics_lib.first_reference_accuracy], image_size=image_size)
