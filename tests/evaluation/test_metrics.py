"""Metrics against reference values: the official VQA evaluation's behaviour (worked by hand
from GT-Vision-Lab/VQA vqaEval.py), pycocoevalcap called directly, hand-computed AUC and SQuAD
cases."""
import itertools
import logging

import numpy as np
import pytest

from kosmos_jax.evaluation import metrics as metrics_lib


@pytest.mark.parametrize("raw, normalised", [
    ("two", "2"),                      # number words -> digits
    ("Ten!", "10"),                    # "!" not next to a space becomes a space
    ("none", "0"),
    ("the dog.", "dog"),               # articles and the final period go
    ("A Red Car", "red car"),
    ("dont", "don't"),                 # contractions get their apostrophe back
    ("isnt it", "isn't it"),
    ("1,000", "1000"),                 # a digit,digit comma deletes every punctuation mark
    ("1,000 (approx)", "1000 approx"),
    ("yes, it is", "yes it is"),       # "," next to a space is deleted
    ("red,blue", "red blue"),          # otherwise it becomes a space
    ("3.5", "3.5"),                    # a period before a digit stays
    ("mr. smith", "mr smith"),
    ("left/right", "left right"),
    ("  Two\tdogs\n", "2 dogs"),
    ("It's", "it's"),                  # the apostrophe is not in the punctuation list
])
def test_vqa_answer_normalisation(raw, normalised):
  assert metrics_lib.normalize_vqa_answer(raw) == normalised


def test_vqa_score_is_min_matches_over_3_averaged_over_leave_one_out():
  # 3 annotators said "2", 7 said "3". Leaving out a "2" leaves 2 matches (2/3), leaving out a
  # "3" leaves 3 (1): (3 * 2/3 + 7 * 1) / 10.
  answers = ["2"] * 3 + ["3"] * 7
  assert metrics_lib.vqa_score("two", answers) == pytest.approx(0.9)
  assert metrics_lib.vqa_score("Three", answers) == 1.0
  assert metrics_lib.vqa_score("4", answers) == 0.0
  # 1 match: (9 * 1/3 + 1 * 0) / 10.
  assert metrics_lib.vqa_score("cat", ["cat"] + ["dog"] * 9) == pytest.approx(0.3)
  # Disagreeing answers (and the prediction) are fully normalised: "1,000" -> "1000".
  assert metrics_lib.vqa_score("1000", ["1,000"] * 5 + ["999"] * 5) == pytest.approx(1.0)
  # When all annotators agree neither side is normalised (the official script since its 2021
  # fix), so only a verbatim prediction matches.
  assert metrics_lib.vqa_score("dog", ["dog."] * 10) == 0.0
  assert metrics_lib.vqa_score("the dog.", ["dog"] * 10) == 0.0
  assert metrics_lib.vqa_score(" dog\n", ["dog"] * 10) == 1.0


def test_vqa_accuracy_metric_and_errors():
  targets = [["2"] * 3 + ["3"] * 7, ["yes"] * 10, ["no"] * 10]
  # "Yes." against ten agreeing "yes" is not normalised, so scores 0.
  got = metrics_lib.vqa_accuracy(targets, ["two", "Yes.", "yes"])
  assert got == {"vqa_accuracy": pytest.approx(100 * (0.9 + 0 + 0) / 3)}
  with pytest.raises(ValueError, match="repeat it"):
    metrics_lib.vqa_accuracy(["yes"], ["yes"])
  with pytest.raises(ValueError, match="pair up"):
    metrics_lib.vqa_accuracy(targets, ["yes"])


CAPTION_REFS = [
    ["A man riding a wave on top of a surfboard.", "A surfer rides a large wave.",
     "Man on a surfboard riding an ocean wave.", "a person surfing in the ocean",
     "A surfer in a wetsuit riding a wave."],
    ["Two dogs play with a frisbee in the park.", "Dogs running on grass after a frisbee.",
     "Two brown dogs chase a flying disc.", "A pair of dogs playing in a field.",
     "Dogs, grass, and a frisbee!"],
    ["A plate of food with broccoli and rice.", "Rice, broccoli and chicken on a plate.",
     "A healthy meal served on a white plate.", "Food on a plate on a table.",
     "a dinner plate with vegetables and rice"],
    ["A red bus driving down a city street.", "A double decker bus on the road.",
     "Red bus in traffic.", "A bus parked at the curb of a street.",
     "The city bus is red."],
]
CAPTION_PREDICTIONS = ["A man riding a wave on a surfboard.", "Two dogs playing with a frisbee.",
                       "A plate of rice and broccoli.", ""]


def test_caption_metrics_equal_pycocoevalcap_called_directly():
  pytest.importorskip("pycocoevalcap")
  from pycocoevalcap.bleu.bleu import Bleu
  from pycocoevalcap.cider.cider import Cider
  from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
  tokenizer = PTBTokenizer()
  gts = tokenizer.tokenize({i: [{"caption": c} for c in refs]
                            for i, refs in enumerate(CAPTION_REFS)})
  res = tokenizer.tokenize({i: [{"caption": p}] for i, p in enumerate(CAPTION_PREDICTIONS)})
  cider_ref = Cider().compute_score(gts, res)[0]
  bleu_ref = Bleu(4).compute_score(gts, res, verbose=0)[0][3]
  assert 0.1 < cider_ref < 5 and 0 < bleu_ref < 1           # a non-trivial fixture

  got = metrics_lib.coco_caption_metrics(CAPTION_REFS, CAPTION_PREDICTIONS)
  assert got["cider"] == pytest.approx(100 * cider_ref, rel=1e-9)
  assert got["bleu_4"] == pytest.approx(100 * bleu_ref, rel=1e-9)
  assert metrics_lib.cider(CAPTION_REFS, CAPTION_PREDICTIONS)["cider"] == pytest.approx(
      got["cider"], rel=1e-9)


def test_perfect_distinct_captions_score_cider_1000(caplog):
  """CIDEr-D of a caption equal to all its (identical) references is 10 in pycocoevalcap's
  units, 1000 in ours (x100, the paper's scale)."""
  pytest.importorskip("pycocoevalcap")
  captions = ["a red circle on the left side", "two blue squares near the top",
              "one green triangle at the bottom right"]
  with caplog.at_level(logging.WARNING):
    got = metrics_lib.coco_caption_metrics([[c] * 5 for c in captions], captions,
                                          spice=not metrics_lib.spice_available())
  assert got["cider"] == pytest.approx(1000.0, rel=1e-6)
  assert got["bleu_4"] == pytest.approx(100.0, rel=1e-6)
  assert "spice" not in got and "SPICE skipped" in caplog.text
  with pytest.raises(ValueError, match="list of reference captions"):
    metrics_lib.coco_caption_metrics(["a cat"], ["a cat"])


def pairwise_auc(y, s):
  pos, neg = s[y == 1], s[y == 0]
  return np.mean([(p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)])


def test_roc_auc_with_ties():
  # Positives score .9 .5 .5, negatives .9 .1 .5. Pairs: (.9: tie, win, win),
  # (.5: loss, win, tie) twice -> (0.5 + 1 + 1 + 2 * (0 + 1 + 0.5)) / 9 = 5.5 / 9.
  y = [1, 0, 1, 0, 1, 0]
  s = [0.9, 0.9, 0.5, 0.1, 0.5, 0.5]
  assert metrics_lib.roc_auc(y, s) == {"auc_roc": pytest.approx(100 * 5.5 / 9)}
  assert metrics_lib.roc_auc([True, False], [0.3, 0.3])["auc_roc"] == pytest.approx(50.0)
  rng = np.random.RandomState(0)
  y = rng.randint(0, 2, 200)
  s = rng.randint(0, 7, 200) / 7.0                           # many ties
  assert metrics_lib.roc_auc(y, s)["auc_roc"] == pytest.approx(100 * pairwise_auc(y, s))
  with pytest.raises(ValueError, match="both classes"):
    metrics_lib.roc_auc([1, 1], [0.2, 0.4])


def test_squad_em_f1_hand_cases():
  got = metrics_lib.squad_em_f1(
      [["Eiffel Tower"], "Penguin Books Ltd.", ["the cat", "a black cat"], [""]],
      ["The Eiffel tower!", "Penguin Books", "black cat", ""])
  # EM: 1, 0, max(0, 1) = 1, 1.  F1: 1, 2*1*(2/3)/(1+2/3) = .8, max(2*.5*1/1.5, 1) = 1, 1.
  assert got["em"] == pytest.approx(100 * 3 / 4)
  assert got["f1"] == pytest.approx(100 * (1 + 0.8 + 1 + 1) / 4)
  assert metrics_lib.squad_em_f1(["red"], ["blue"]) == {"em": 0.0, "f1": 0.0}


def test_accuracy_and_rank_accuracy():
  assert metrics_lib.accuracy(["cat", "dog", "cat"], ["cat", "cat", "cat"])["accuracy"] == \
      pytest.approx(200 / 3)
  scores = [[-3.0, -1.0, -2.0], [-0.5, -4.0], [-1.0, -1.0, -7.0]]      # ragged; tie -> first
  assert metrics_lib.rank_accuracy([1, 1, 0], scores) == {"accuracy": pytest.approx(200 / 3)}
