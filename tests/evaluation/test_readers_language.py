"""Language benchmark readers on small files written here in each official release format, with
sentences from the shapes world: prompts end where the answer starts, candidates / labels /
references line up, and malformed or unlabelled records are skipped and counted."""
import csv
import json

import pytest
import seqio

from kosmos_jax.data import prompts as prompts_lib
from kosmos_jax.evaluation import readers as eval_readers
from kosmos_jax.evaluation import tasks as eval_tasks
from kosmos_jax.data import synthetic

WORLD = synthetic.WorldConfig(seed=5, train_images=6, eval_images=8)


@pytest.fixture(scope="module")
def sentences():
  return list(synthetic.split_data(WORLD, "test").captions["answer"])


def _load(task, split):
  ds = seqio.get_mixture_or_task(task).get_dataset(split=split, sequence_length=None,
                                                   shuffle=False)
  out = []
  for ex in ds.as_numpy_iterator():
    assert ex["images"].shape[0] == 0                     # text only
    out.append({"id": ex["id"].decode(), "prompt": ex["prompt"].decode(),
                "references": [r.decode() for r in ex["references"]],
                "candidates": [c.decode() for c in ex["candidates"]], "label": int(ex["label"])})
  return out


def _skips(task, split):
  return eval_readers.skipped_records(task).get(split, {})


def _jsonl(path, rows):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")


def _check_consistent(examples):
  for ex in examples:
    assert ex["references"] == [ex["candidates"][ex["label"]]]
    assert prompts_lib.IMAGE_MARKER not in ex["prompt"]


def test_hellaswag(tmp_path, sentences):
  rows = [{"ind": 10 + k, "activity_label": "Shapes", "ctx_a": "x", "ctx_b": "y",
           "ctx": f"[header] A scene. [title] There is {sentences[k]}.",
           "endings": [f"it is {s}." for s in sentences[k:k + 4]], "label": k % 4,
           "split": "val", "split_type": "indomain", "source_id": "shapes"} for k in range(3)]
  rows.append("not json")
  rows.append({"ind": 20, "ctx": "c", "endings": ["a", "b", "c", "d"]})       # hidden label
  rows.append({"ind": 21, "ctx": "c", "endings": ["a", "b"], "label": 5})     # bad label
  _jsonl(tmp_path / "hellaswag_val.jsonl", rows)
  task = eval_readers.hellaswag(str(tmp_path))
  assert eval_tasks.get_spec(task).mode == "score"
  val = _load(task, "validation")
  assert [e["id"] for e in val] == ["10", "11", "12"]
  assert val[1]["prompt"] == f"Shapes: A scene. There is {sentences[1]}."
  assert val[1]["candidates"] == [f"it is {s}." for s in sentences[1:5]]
  assert [e["label"] for e in val] == [0, 1, 2]
  _check_consistent(val)
  assert _skips(task, "validation") == {"bad_json_line": 1, "missing_label": 1,
                                        "malformed_record": 1}


def test_piqa_labels_file(tmp_path, sentences):
  rows = [{"id": f"q{k}", "goal": f"To draw {sentences[k]},",
           "sol1": "use a pencil.", "sol2": "use a spoon."} for k in range(3)]
  rows.insert(1, "{broken")
  _jsonl(tmp_path / "valid.jsonl", rows)
  (tmp_path / "valid-labels.lst").write_text("0\n1\n1\n0\n")
  task = eval_readers.piqa(str(tmp_path))
  val = _load(task, "validation")
  # Line 2 is broken: labels still pair with their own lines (0, [1 skipped], 1, 0).
  assert [(e["id"], e["label"]) for e in val] == [("q0", 0), ("q1", 1), ("q2", 0)]
  assert val[0]["prompt"] == f"To draw {sentences[0]},"
  assert val[0]["candidates"] == ["use a pencil.", "use a spoon."]
  _check_consistent(val)
  assert _skips(task, "validation") == {"bad_json_line": 1}
  (tmp_path / "valid-labels.lst").write_text("0\n1\n")
  with pytest.raises(ValueError, match="4 lines but .* 2 labels"):
    _load(task, "validation")


def test_copa(tmp_path):
  rows = [{"premise": "The circle turned red.", "choice1": "The square was red.",
           "choice2": "I painted it.", "question": "cause", "label": 1, "idx": 0},
          {"premise": "The circle was at the top.", "choice1": "It fell down.",
           "choice2": "TV showed it.", "question": "effect", "label": 0, "idx": 1},
          {"premise": "p", "choice1": "a", "choice2": "b", "question": "why", "label": 0,
           "idx": 2}]
  _jsonl(tmp_path / "val.jsonl", rows)
  task = eval_readers.copa(str(tmp_path))
  val = _load(task, "validation")
  assert [e["prompt"] for e in val] == ["The circle turned red because",
                                        "The circle was at the top so"]
  assert val[0]["candidates"] == ["the square was red.", "I painted it."]
  assert val[1]["candidates"] == ["it fell down.", "TV showed it."]
  assert [e["label"] for e in val] == [1, 0]
  _check_consistent(val)
  assert _skips(task, "validation") == {"malformed_record": 1}


def test_boolq_superglue_and_original(tmp_path, sentences):
  superglue, original = tmp_path / "superglue", tmp_path / "original"
  _jsonl(superglue / "val.jsonl", [
      {"passage": f"There is {sentences[0]}.", "question": "is there a circle", "label": True,
       "idx": 0},
      {"passage": f"There is {sentences[1]}.", "question": "is it blue?", "label": False,
       "idx": 1}])
  _jsonl(original / "dev.jsonl", [
      {"question": "is there a circle", "title": "t", "answer": False,
       "passage": f"There is {sentences[2]}."},
      {"question": "no answer here", "title": "t", "passage": "p"}])
  sg = _load(eval_readers.boolq(str(superglue)), "validation")
  assert sg[0]["prompt"] == f"There is {sentences[0]}. Question: is there a circle? Answer:"
  assert [e["label"] for e in sg] == [1, 0]
  assert all(e["candidates"] == ["no", "yes"] for e in sg)
  _check_consistent(sg)
  orig = _load(eval_readers.boolq(str(original), name="boolq_original"), "validation")
  assert [(e["id"], e["label"]) for e in orig] == [("1", 0)]
  assert _skips("boolq_original", "validation") == {"missing_label": 1}


def test_cb(tmp_path):
  _jsonl(tmp_path / "val.jsonl", [
      {"premise": "The circle is red.", "hypothesis": "The circle is blue.",
       "label": "contradiction", "idx": 0},
      {"premise": "There is a square.", "hypothesis": "It is at the top.", "label": "neutral",
       "idx": 1},
      {"premise": "p", "hypothesis": "h", "label": "maybe", "idx": 2}])
  val = _load(eval_readers.cb(str(tmp_path)), "validation")
  assert val[0]["prompt"] == ("The circle is red. Question: The circle is blue. True, False or "
                              "Neither? Answer:")
  assert [e["references"] for e in val] == [["False"], ["Neither"]]
  _check_consistent(val)
  assert _skips("cb", "validation") == {"malformed_record": 1}


def test_storycloze_csv(tmp_path, sentences):
  header = ["InputStoryid", "InputSentence1", "InputSentence2", "InputSentence3",
            "InputSentence4", "RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2",
            "AnswerRightEnding"]
  path = tmp_path / "cloze_test_test__spring2016 - cloze_test_ALL_test.csv"
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerow(["s1"] + [f"There is {s}." for s in sentences[:4]] +
                    ["It was red.", "It was round.", "2"])
    writer.writerow(["s2"] + [f"There is {s}." for s in sentences[4:8]] +
                    ["It moved.", "It stayed.", "3"])
  task = eval_readers.storycloze(str(tmp_path))
  assert eval_tasks.get_spec(task).demo_split == "validation"
  test = _load(task, "test")
  assert [(e["id"], e["label"]) for e in test] == [("s1", 1)]
  assert test[0]["prompt"] == " ".join(f"There is {s}." for s in sentences[:4])
  assert test[0]["candidates"] == ["It was red.", "It was round."]
  _check_consistent(test)
  assert _skips(task, "test") == {"malformed_record": 1}
  with pytest.raises(FileNotFoundError, match=r"_val\.csv.*STORYCLOZE_ROOT"):
    _load(task, "validation")


def test_winogrande(tmp_path):
  _jsonl(tmp_path / "dev.jsonl", [
      {"qID": "w1", "sentence": "The circle is above the square because _ floats.",
       "option1": "the circle", "option2": "the square", "answer": "1"},
      {"qID": "w2", "sentence": "_ is red, so the red shape is the triangle.",
       "option1": "The triangle", "option2": "The cross", "answer": "1"},
      {"qID": "w3", "sentence": "no blank here", "option1": "a", "option2": "b",
       "answer": "2"}])
  task = eval_readers.winogrande(str(tmp_path))
  val = _load(task, "validation")
  assert val[0]["prompt"] == "The circle is above the square because"
  assert val[0]["candidates"] == ["the circle floats.", "the square floats."]
  assert val[1]["prompt"] == ""
  assert val[1]["candidates"][1] == "The cross is red, so the red shape is the triangle."
  assert [e["label"] for e in val] == [0, 0]
  _check_consistent(val)
  assert _skips(task, "validation") == {"malformed_record": 1}
