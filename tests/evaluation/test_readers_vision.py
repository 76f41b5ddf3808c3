"""Image benchmark readers on small files written here in each official format from the shapes
world: the registered eval tasks yield the expected ids, prompts, images, references, candidates
and labels; malformed records are skipped and counted; missing paths name the gin macro."""
import json
import os

import numpy as np
import pytest
import seqio
from PIL import Image

from kosmos_jax.data import prompts as prompts_lib
from kosmos_jax.evaluation import readers as eval_readers
from kosmos_jax.evaluation import tasks as eval_tasks
from kosmos_jax.evaluation import metrics as metrics_lib
from kosmos_jax.data import preprocessors as pp
from kosmos_jax.data import synthetic

WORLD = synthetic.WorldConfig(seed=3, train_images=6, eval_images=6)


@pytest.fixture(scope="module")
def world():
  data = synthetic.split_data(WORLD, "test")
  return {"images": data.images, "captions": data.captions["answer"], "vqa": data.vqa}


def _save(array, path, fmt):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, format=fmt)


def _load(task, split):
  """The task's examples as Python values (strings decoded)."""
  ds = seqio.get_mixture_or_task(task).get_dataset(split=split, sequence_length=None,
                                                   shuffle=False)
  out = []
  for ex in ds.as_numpy_iterator():
    out.append({"id": ex["id"].decode(), "prompt": ex["prompt"].decode(), "images": ex["images"],
                "references": [r.decode() for r in ex["references"]],
                "candidates": [c.decode() for c in ex["candidates"]], "label": int(ex["label"])})
  return out


def _skips(task, split):
  return eval_readers.skipped_records(task).get(split, {})


def _one_marker_per_image(examples):
  for ex in examples:
    assert ex["prompt"].count(prompts_lib.IMAGE_MARKER) == len(ex["images"])


# ----------------------------------------------------------------------------- captions

def _sentence(caption):
  return caption[0].upper() + caption[1:] + ". "            # COCO's raw style


def test_coco_karpathy_captions(tmp_path, world):
  images, captions = world["images"], world["captions"]
  root = tmp_path / "coco"
  entries = []
  # (index into the world, Karpathy split, written?)
  layout = [(0, "test", True), (1, "test", True), (2, "restval", True), (3, "train", True),
            (4, "test", False), (5, "val", True)]
  for i, split, written in layout:
    sub = "val2014" if split in ("test", "val", "restval") else "train2014"
    filename = f"COCO_{sub}_{100 + i:012d}.jpg"
    if written:
      _save(images[i], str(root / sub / filename), "JPEG")
    entries.append({"filepath": sub, "filename": filename, "split": split, "cocoid": 100 + i,
                    "imgid": i, "sentids": [2 * i, 2 * i + 1],
                    "sentences": [{"raw": _sentence(captions[i]), "tokens": []},
                                  {"raw": f"There is {captions[i]}", "tokens": []}]})
  entries.append({"filepath": "val2014", "filename": "x.jpg", "split": "test", "cocoid": 7})
  annotations = tmp_path / "dataset_coco.json"
  annotations.write_text(json.dumps({"images": entries, "dataset": "coco"}))

  task = eval_readers.coco_karpathy_captions(str(annotations), str(root), image_size=32)
  assert task == "coco_karpathy_captions"
  spec = eval_tasks.get_spec(task)
  assert (spec.mode, spec.strategy, spec.beam_size) == ("generate", "beam", 5)
  before = pp.record_counts().get("eval/coco_karpathy_captions/test/missing_image", 0)
  test = _load(task, "test")
  assert [e["id"] for e in test] == ["100", "101"]
  assert all(e["prompt"] == "<image> An image of" for e in test)
  _one_marker_per_image(test)
  assert test[0]["references"] == [captions[0] + ".", f"there is {captions[0]}"]
  for ex, i in zip(test, (0, 1)):
    assert ex["images"].shape == (1, 32, 32, 3) and ex["images"].dtype == np.uint8
    assert np.abs(ex["images"][0].astype(int) - images[i]).mean() < 12     # JPEG round trip
  assert _skips(task, "test") == {"missing_image": 1, "malformed_record": 1}
  assert pp.record_counts()["eval/coco_karpathy_captions/test/missing_image"] == before + 1
  # Karpathy "train" for the paper is train + restval (113,287 images).
  assert [e["id"] for e in _load(task, "train")] == ["102", "103"]
  assert [e["id"] for e in _load(task, "validation")] == ["105"]


def test_flickr30k_karpathy_captions_resizes(tmp_path, world):
  images, captions = world["images"], world["captions"]
  root = tmp_path / "flickr30k-images"
  entries = []
  for i in range(2):
    _save(images[i], str(root / f"{1000 + i}.jpg"), "JPEG")
    entries.append({"filename": f"{1000 + i}.jpg", "split": "test", "imgid": i,
                    "sentences": [{"raw": _sentence(captions[i])}]})
  annotations = tmp_path / "dataset_flickr30k.json"
  annotations.write_text(json.dumps({"images": entries, "dataset": "flickr30k"}))
  task = eval_readers.flickr30k_karpathy_captions(str(annotations), str(root), image_size=48)
  test = _load(task, "test")
  assert [e["id"] for e in test] == ["1000", "1001"]
  assert test[1]["images"].shape == (1, 48, 48, 3)
  assert test[1]["references"] == [captions[1] + "."]


# ----------------------------------------------------------------------------- VQA

def _answers(truth, distractor):
  return [distractor] * 3 + [truth] * 7          # majority answer not first on purpose


def test_vqav2(tmp_path, world):
  images, vqa = world["images"], world["vqa"]
  root, coco = tmp_path / "vqa", tmp_path / "coco"
  root.mkdir()
  for image_id in (0, 1, 2):               # image 3 is missing on disk
    _save(images[image_id], str(coco / "val2014" / f"COCO_val2014_{image_id:012d}.jpg"), "JPEG")
  questions, annotations = [], []
  for k in range(6):
    image_id = [0, 0, 1, 2, 3, 1][k]
    text = vqa["prompt"][k].removeprefix("Question: ").removesuffix(" Answer:")
    questions.append({"image_id": image_id, "question": text, "question_id": 5000 + k})
    if k == 5:                              # a question without its annotation
      continue
    truth = metrics_lib.normalize_vqa_answer(vqa["answer"][k])   # as VQAv2 stores answers
    annotations.append({
        "question_id": 5000 + k, "image_id": image_id, "multiple_choice_answer": truth,
        "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                    for j, a in enumerate(_answers(truth, "maybe"))],
        "question_type": "what", "answer_type": "other"})
  (root / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps(
      {"data_subtype": "val2014", "questions": questions}))
  (root / "v2_mscoco_val2014_annotations.json").write_text(json.dumps(
      {"data_subtype": "val2014", "annotations": annotations}))

  task = eval_readers.vqav2(str(root), str(coco), image_size=32)
  spec = eval_tasks.get_spec(task)
  assert (spec.mode, spec.strategy) == ("generate", "greedy") and spec.max_new_tokens <= 10
  val = _load(task, "validation")
  assert [e["id"] for e in val] == ["5000", "5001", "5002", "5003"]
  _one_marker_per_image(val)
  for ex, k in zip(val, range(4)):
    assert ex["prompt"] == f"<image> {vqa['prompt'][k]}"
    truth = metrics_lib.normalize_vqa_answer(vqa["answer"][k])
    assert ex["references"][0] == truth                      # the k-shot demonstration answer
    assert sorted(ex["references"]) == sorted(_answers(truth, "maybe"))
  assert np.abs(val[2]["images"][0].astype(int) - images[1]).mean() < 12
  assert metrics_lib.vqa_accuracy([e["references"] for e in val],
                               [vqa["answer"][k] for k in range(4)]) == {"vqa_accuracy": 100.0}
  assert metrics_lib.vqa_accuracy([e["references"] for e in val],
                               ["maybe"] * 4) == {"vqa_accuracy": 90.0}
  assert _skips(task, "validation") == {"missing_image": 1, "missing_label": 1}
  with pytest.raises(FileNotFoundError,
                     match=r"v2_OpenEnded_mscoco_train2014_questions\.json.*VQAV2_ROOT"):
    _load(task, "train")


def test_vizwiz(tmp_path, world):
  images, vqa = world["images"], world["vqa"]
  root = tmp_path / "vizwiz"
  entries = []
  for k in range(4):
    name = f"VizWiz_val_{k:08d}.jpg"
    _save(images[k], str(root / "val" / name), "JPEG")
    text = vqa["prompt"][k].removeprefix("Question: ").removesuffix(" Answer:")
    answers = [{"answer": a, "answer_confidence": "yes"}
               for a in _answers(vqa["answer"][k], "unanswerable")]
    entries.append({"image": name, "question": text, "answers": answers, "answerable": 1,
                    "answer_type": "other"})
  entries[3]["answers"] = "blue"                       # malformed: not a list of answers
  (root / "Annotations").mkdir(parents=True)
  (root / "Annotations" / "val.json").write_text(json.dumps(entries))
  task = eval_readers.vizwiz(str(root), image_size=32)
  val = _load(task, "validation")
  assert [e["id"] for e in val] == [f"VizWiz_val_{k:08d}" for k in range(3)]
  assert [e["references"][0] for e in val] == list(vqa["answer"][:3])
  assert val[1]["prompt"] == f"<image> {vqa['prompt'][1]}"
  assert _skips(task, "validation") == {"malformed_record": 1}


# ----------------------------------------------------------------------------- OCR-free

def test_hateful_memes(tmp_path, world):
  images = world["images"]
  root = tmp_path / "hateful_memes"
  lines = []
  for k, label in enumerate([0, 1, 0, 1]):
    _save(images[k], str(root / "img" / f"{k:05d}.png"), "PNG")
    lines.append(json.dumps({"id": k, "img": f"img/{k:05d}.png", "label": label,
                             "text": world["captions"][k]}))
  lines.append("{this is not json")
  lines.append(json.dumps({"id": 9, "img": "img/00009.png", "label": 1, "text": "gone"}))
  lines.append(json.dumps({"id": 8, "img": "img/00000.png", "text": "no label"}))
  (root / "img" / "corrupt.png").write_bytes(b"not a png at all")
  lines.append(json.dumps({"id": 7, "img": "img/corrupt.png", "label": 0, "text": "bad"}))
  (root / "dev_seen.jsonl").write_text("\n".join(lines) + "\n")

  task = eval_readers.hateful_memes(str(root), image_size=32)
  spec = eval_tasks.get_spec(task)
  assert spec.mode == "score"
  val = _load(task, "validation")
  assert [e["id"] for e in val] == ["0", "1", "2", "3"]
  assert [e["label"] for e in val] == [0, 1, 0, 1]
  assert all(e["candidates"] == ["no", "yes"] for e in val)
  assert [e["references"] for e in val] == [["no"], ["yes"], ["no"], ["yes"]]
  assert all(e["prompt"] == "<image> Question: does this picture contain real hate speech? "
             "Answer:" for e in val)
  for k, ex in enumerate(val):
    np.testing.assert_array_equal(ex["images"][0], images[k])          # PNG: lossless
  assert _skips(task, "validation") == {"bad_json_line": 1, "missing_image": 1,
                                        "missing_label": 1, "image_unreadable": 1}
  # candidate 1 is the positive class: scores favouring "yes" on hateful memes give AUC 100.
  scores = [[0.0, 1.0] if e["label"] else [1.0, 0.0] for e in val]
  assert metrics_lib.binary_choice_auc([e["label"] for e in val], scores)["auc_roc"] == 100.0


def test_rendered_sst2_and_chain_of_thought(tmp_path, world):
  images = world["images"]
  root = tmp_path / "rendered-sst2"
  for k in range(3):
    _save(images[k], str(root / "test" / "negative" / f"{k}.png"), "PNG")
  for k in range(2):
    _save(images[3 + k], str(root / "test" / "positive" / f"{k}.png"), "PNG")
  (root / "test" / "positive" / "notes.txt").write_text("not an image")
  plain = eval_readers.rendered_sst2(str(root), image_size=32)
  cot = eval_readers.rendered_sst2_cot(str(root), image_size=32)
  assert eval_tasks.get_spec(plain).rationale_prompt is None
  assert eval_tasks.get_spec(cot).rationale_prompt == "Introduce this picture in detail:"
  for task in (plain, cot):
    test = _load(task, "test")
    # Classes alternate, so the first records (the k-shot pool) hold both.
    assert [e["id"] for e in test] == ["negative/0", "positive/0", "negative/1", "positive/1",
                                       "negative/2"]
    assert [e["label"] for e in test] == [0, 1, 0, 1, 0]
    assert all(e["candidates"] == ["negative", "positive"] for e in test)
    assert test[1]["references"] == ["positive"]
    assert test[0]["prompt"] == ("<image> Question: what is the sentiment of the opinion? "
                                 "Answer:")
    np.testing.assert_array_equal(test[1]["images"][0], images[3])
    assert _skips(task, "test") == {"not_an_image_file": 1}
  with pytest.raises(FileNotFoundError, match=r"'valid'.*RENDERED_SST2_ROOT"):
    _load(plain, "validation")


# ----------------------------------------------------------------------------- ImageNet

def test_imagenet_constrained_and_unconstrained(tmp_path, world):
  images = world["images"]
  root = tmp_path / "imagenet"
  wnids = ["n01440764", "n01443537", "n01484850"]
  counts = [2, 1, 2]
  k = 0
  for wnid, count in zip(wnids, counts):
    for j in range(count):
      _save(images[k], str(root / "val" / wnid / f"ILSVRC2012_val_{k:08d}.JPEG"), "JPEG")
      k += 1
  mapping = tmp_path / "LOC_synset_mapping.txt"
  mapping.write_text("n01440764 tench, Tinca tinca\n"
                     "n01443537 goldfish, Carassius auratus\n"
                     "n01484850 great white shark, white shark, man-eater\n"
                     "n01491361 tiger shark, Galeocerdo cuvieri\n")
  names = ["tench", "goldfish", "great white shark", "tiger shark"]
  constrained = eval_readers.imagenet(str(root), str(mapping), image_size=32)
  free = eval_readers.imagenet(str(root), str(mapping), constrained=False, image_size=32)
  assert (constrained, free) == ("imagenet_constrained", "imagenet_unconstrained")
  for task, is_constrained in ((constrained, True), (free, False)):
    spec = eval_tasks.get_spec(task)
    assert (spec.strategy, spec.beam_size, spec.constrained) == ("beam", 2, is_constrained)
    val = _load(task, "validation")
    assert [e["id"] for e in val] == [
        "n01440764/ILSVRC2012_val_00000000", "n01443537/ILSVRC2012_val_00000002",
        "n01484850/ILSVRC2012_val_00000003", "n01440764/ILSVRC2012_val_00000001",
        "n01484850/ILSVRC2012_val_00000004"]
    assert [e["references"] for e in val] == [["tench"], ["goldfish"], ["great white shark"],
                                              ["tench"], ["great white shark"]]
    assert [e["label"] for e in val] == [0, 1, 2, 0, 2]
    assert all(e["prompt"] == "<image> The photo of the" for e in val)
    _one_marker_per_image(val)
    expected = names if is_constrained else []
    assert all(e["candidates"] == expected for e in val)
    assert np.abs(val[1]["images"][0].astype(int) - images[2]).mean() < 12
  (tmp_path / "imagenet" / "val" / "n09999999").mkdir()
  with pytest.raises(ValueError, match=r"n09999999.*must name every class folder"):
    _load(constrained, "validation")


def test_class_name_files(tmp_path):
  where = eval_readers.vision.PathArg("imagenet", "class_names", "IMAGENET_CLASS_NAMES", "x")
  dirs = ["n01440764", "n01443537"]
  as_json = tmp_path / "names.json"
  as_json.write_text(json.dumps({"n01440764": "tench", "n01443537": ["goldfish", "carp"]}))
  keras = tmp_path / "imagenet_class_index.json"
  keras.write_text(json.dumps({"0": ["n01440764", "tench"], "1": ["n01443537", "gold_fish"]}))
  ordered = tmp_path / "classes.txt"
  ordered.write_text("tench\ngoldfish\n")
  read = eval_readers.read_class_names
  assert read(str(as_json), dirs, where) == {"n01440764": "tench", "n01443537": "goldfish"}
  assert read(str(keras), dirs, where) == {"n01440764": "tench", "n01443537": "gold fish"}
  assert read(str(ordered), dirs[::-1], where) == {"n01440764": "tench", "n01443537": "goldfish"}
  with pytest.raises(ValueError, match="2 names, one per line, but there are 3"):
    read(str(ordered), dirs + ["n01484850"], where)
