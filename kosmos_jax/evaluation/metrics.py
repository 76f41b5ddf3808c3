"""Evaluation metrics of the Kosmos-1 benchmarks, as SeqIO metric functions.

Every function takes `(targets, predictions)` (SeqIO `metric_fns`) or `(targets, scores)`
(SeqIO `score_metric_fns`) and returns `{name: value}`, with values in percent (x100), the
scale of the paper's tables: CIDEr 67.1 on Flickr30k means pycocoevalcap's CIDEr-D of 0.671.

  coco_caption_metrics  CIDEr-D and BLEU-4 (+ SPICE when available) through pycocoevalcap, after
                        its PTB tokenizer (Java), exactly as the COCO caption evaluation server.
  vqa_accuracy          VQAv2 / VizWiz accuracy with the official answer normalisation and
                        min(#matching annotators / 3, 1) averaged over leave-one-out subsets.
  accuracy              exact-match accuracy (Rendered SST-2, ImageNet, language tasks).
  rank_accuracy         multiple choice by likelihood: argmax of per-choice scores.
  roc_auc               area under the ROC curve, ties counted half (HatefulMemes).
  squad_em_f1           SQuAD-style exact match and token F1 (WebSRC).

pycocoevalcap (and Java on PATH) is needed only by `coco_caption_metrics`: `pip install
kosmos_jax[eval]`. SPICE also needs Stanford CoreNLP 3.6.0, which pycocoevalcap downloads on first
use; offline, `spice=True` logs how to install it and leaves SPICE out.
"""
from __future__ import annotations

import collections
import logging
import os
import re
import shutil
import string
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

# ----------------------------------------------------------------------------- VQA

# The official VQA evaluation's tables (GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation/
# vqaEval.py), reproduced as data so that scores match the evaluation server.
_VQA_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}
_VQA_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_VQA_ARTICLES = ("a", "an", "the")
_VQA_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
              "@", "`", ",", "?", "!")
# The official pattern: "(?!<=" is a typo for a lookbehind, so it strips every period that is
# not followed by a digit; `re.UNICODE` is passed as sub's count, i.e. at most 32 of them.
# re.ASCII: the official script is Python 2, where these patterns' \d is [0-9] only.
_VQA_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)", re.ASCII)
_VQA_PERIOD_COUNT = int(re.UNICODE)        # 32
_VQA_COMMA_NUMBER = re.compile(r"(\d)(,)(\d)", re.ASCII)


def vqa_process_punctuation(text: str) -> str:
  """The official `processPunctuation`: a punctuation mark next to a space, or any mark when the
  text has a digit,digit comma ("1,000"), is deleted; other marks become a space; periods not
  followed by a digit are deleted."""
  out = text
  delete_all = _VQA_COMMA_NUMBER.search(text) is not None
  for p in _VQA_PUNCT:
    if p + " " in text or " " + p in text or delete_all:
      out = out.replace(p, "")
    else:
      out = out.replace(p, " ")
  return _VQA_PERIOD.sub("", out, count=_VQA_PERIOD_COUNT)


def vqa_process_digit_article(text: str) -> str:
  """The official `processDigitArticle`: lowercase, number words to digits, drop articles,
  restore apostrophes of common contractions ("dont" -> "don't")."""
  words = [_VQA_NUMBERS.get(w, w) for w in text.lower().split()]
  words = [w for w in words if w not in _VQA_ARTICLES]
  return " ".join(_VQA_CONTRACTIONS.get(w, w) for w in words)


def _vqa_strip(answer: str) -> str:
  """The official script's first step on every answer: newlines and tabs to spaces, strip."""
  return answer.replace("\n", " ").replace("\t", " ").strip()


def normalize_vqa_answer(answer: str) -> str:
  """An answer fully normalised (whitespace, punctuation, digits/articles/contractions): the form
  VQAv2 stores its annotations in, and what the official script compares when annotators
  disagree."""
  return vqa_process_digit_article(vqa_process_punctuation(_vqa_strip(answer)))


def vqa_score(prediction: str, answers: Sequence[str]) -> float:
  """Accuracy of one prediction against the annotators' answers (10 in VQAv2 and VizWiz).

  As the official evaluation (GT-Vision-Lab/VQA vqaEval.py, 2021 fix): every answer and the
  prediction are whitespace-stripped; only if the annotators then disagree are both sides fully
  normalised, otherwise they are compared as they are ("two" never matches ["2"] * 10); then
  for each annotator, min(#other annotators giving the prediction / 3, 1), averaged.
  (The official script scores a single answer 0; here that is an error, as is a bare string.)
  """
  if isinstance(answers, str) or len(answers) < 2:
    raise ValueError(f"vqa_score needs the list of annotator answers (10 in VQAv2), got "
                     f"{answers!r}; with a single reference repeat it, e.g. [answer] * 10")
  prediction = _vqa_strip(prediction)
  answers = [_vqa_strip(a) for a in answers]
  if len(set(answers)) > 1:
    answers = [vqa_process_digit_article(vqa_process_punctuation(a)) for a in answers]
    prediction = vqa_process_digit_article(vqa_process_punctuation(prediction))
  total = sum(a == prediction for a in answers)
  # Python's left-to-right sum and /len, as the official script: bit-identical averages.
  accs = [min(1.0, (total - (a == prediction)) / 3.0) for a in answers]
  return sum(accs) / len(accs)


def vqa_accuracy(targets: Sequence[Sequence[str]], predictions: Sequence[str]
                 ) -> dict[str, float]:
  """SeqIO metric: targets are lists of annotator answers, predictions answer strings. The
  official overall accuracy, 100 * sum / count (the official script reports it rounded to 2)."""
  _check_lengths(targets, predictions)
  scores = [vqa_score(p, t) for t, p in zip(targets, predictions)]
  return {"vqa_accuracy": 100.0 * sum(scores) / len(scores)}


# ----------------------------------------------------------------------------- captions

_CAPTION_METRICS = ("cider", "bleu_4", "spice")


def _require_pycocoevalcap():
  try:
    import pycocoevalcap  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise ImportError("caption metrics need pycocoevalcap: pip install 'kosmos_jax[eval]' "
                      "(or pip install pycocoevalcap==1.2)") from e
  if shutil.which("java") is None:
    raise RuntimeError("caption metrics need Java on PATH (pycocoevalcap's PTB tokenizer is "
                       "Stanford CoreNLP); install a JRE, e.g. apt-get install default-jre")


def spice_available() -> bool:
  """Whether SPICE can run offline: pycocoevalcap plus its Stanford CoreNLP 3.6.0 jars."""
  try:
    from pycocoevalcap.spice import get_stanford_models  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  lib = os.path.join(os.path.dirname(get_stanford_models.__file__), get_stanford_models.SPICELIB)
  return all(os.path.exists(os.path.join(lib, f"{get_stanford_models.JAR}{suffix}.jar"))
             for suffix in ("", "-models"))


def ptb_tokenize(texts: Mapping[Any, Sequence[str]]) -> dict[Any, list[str]]:
  """pycocoevalcap's PTBTokenizer (lowercase, punctuation removed) on {key: [texts]}."""
  _require_pycocoevalcap()
  from pycocoevalcap.tokenizer import ptbtokenizer  # pylint: disable=g-import-not-at-top
  return ptbtokenizer.PTBTokenizer().tokenize({k: [{"caption": t} for t in v] for k, v in texts.items()})


def coco_caption_metrics(targets: Sequence[Sequence[str]], predictions: Sequence[str], *,
                         metrics: Iterable[str] = ("cider", "bleu_4"), spice: bool = False
                         ) -> dict[str, float]:
  """SeqIO metric: corpus CIDEr-D and BLEU-4 (x100) of predicted captions.

  Args:
    targets: per example, its reference captions (5 in COCO / Flickr30k Karpathy splits).
    predictions: one caption per example.
    metrics: subset of ("cider", "bleu_4", "spice").
    spice: also compute SPICE (needs Stanford CoreNLP 3.6.0 next to pycocoevalcap; when it is
      missing SPICE is left out with a logged explanation rather than downloaded).
  Returns:
    {"cider": ..., "bleu_4": ..., ["spice": ...]}, x100 (the paper's scale).
  """
  _check_lengths(targets, predictions)
  metrics = set(metrics) | ({"spice"} if spice else set())
  unknown = metrics - set(_CAPTION_METRICS)
  if unknown:
    raise ValueError(f"unknown caption metrics {sorted(unknown)}; choose from {_CAPTION_METRICS}")
  for i, refs in enumerate(targets):
    if isinstance(refs, str) or not refs:
      raise ValueError(f"targets[{i}] must be a non-empty list of reference captions, got "
                       f"{refs!r}")
  # One tokenizer (JVM) run for references and predictions; -preserveLines keeps them apart.
  tokens = ptb_tokenize({**{("ref", i): list(r) for i, r in enumerate(targets)},
                         **{("hyp", i): [p] for i, p in enumerate(predictions)}})
  gts = {i: tokens[("ref", i)] for i in range(len(targets))}
  res = {i: tokens[("hyp", i)] for i in range(len(predictions))}
  out = {}
  if "cider" in metrics:
    from pycocoevalcap.cider.cider import Cider  # pylint: disable=g-import-not-at-top
    out["cider"] = 100.0 * float(Cider().compute_score(gts, res)[0])
  if "bleu_4" in metrics:
    from pycocoevalcap.bleu.bleu import Bleu  # pylint: disable=g-import-not-at-top
    out["bleu_4"] = 100.0 * float(Bleu(4).compute_score(gts, res, verbose=0)[0][3])
  if "spice" in metrics:
    if spice_available():
      from pycocoevalcap.spice.spice import Spice  # pylint: disable=g-import-not-at-top
      out["spice"] = 100.0 * float(Spice().compute_score(gts, res)[0])
    else:
      logging.warning(
          "SPICE skipped: it needs stanford-corenlp-3.6.0.jar and -models.jar in "
          "pycocoevalcap/spice/lib, which pycocoevalcap downloads from nlp.stanford.edu on first "
          "use. On a machine with internet run: python -c 'from pycocoevalcap.spice import "
          "get_stanford_models as g; g.get_stanford_models()'")
  return out


def cider_per_example(targets: Sequence[Sequence[str]], predictions: Sequence[str]
                      ) -> list[float]:
  """Each prediction's CIDEr-D (x100) within the corpus: the terms whose mean is `cider`."""
  _check_lengths(targets, predictions)
  tokens = ptb_tokenize({**{("ref", i): list(r) for i, r in enumerate(targets)},
                         **{("hyp", i): [p] for i, p in enumerate(predictions)}})
  from pycocoevalcap.cider.cider import Cider  # pylint: disable=g-import-not-at-top
  _, scores = Cider().compute_score({i: tokens[("ref", i)] for i in range(len(targets))},
                                    {i: tokens[("hyp", i)] for i in range(len(predictions))})
  return [100.0 * float(s) for s in scores]


def cider(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
  """SeqIO metric: CIDEr-D x100 only."""
  return coco_caption_metrics(targets, predictions, metrics=("cider",))


def bleu_4(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
  """SeqIO metric: BLEU-4 x100 only (pycocoevalcap, "closest" reference length)."""
  return coco_caption_metrics(targets, predictions, metrics=("bleu_4",))


# ----------------------------------------------------------------------------- classification


def accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
  """SeqIO metric: percentage of predictions equal to their target."""
  _check_lengths(targets, predictions)
  return {"accuracy": 100.0 * float(np.mean([t == p for t, p in zip(targets, predictions)]))}


def first_reference_accuracy(targets: Sequence[Sequence[str]], predictions: Sequence[str]
                             ) -> dict[str, float]:
  """SeqIO metric: accuracy of each (stripped) prediction against its first reference."""
  return accuracy([t[0].strip() for t in targets], [p.strip() for p in predictions])


def rank_accuracy(targets: Sequence[int], scores: Sequence[Sequence[float]]) -> dict[str, float]:
  """SeqIO score metric for multiple choice by likelihood: targets are correct choice indices,
  scores the per-choice log-likelihoods (e.g. `ContinuationScores.total` rows; ragged allowed).
  A tie goes to the first choice, as argmax."""
  _check_lengths(targets, scores)
  hits = [int(np.argmax(np.asarray(s))) == int(t) for t, s in zip(targets, scores)]
  return {"accuracy": 100.0 * float(np.mean(hits))}


def roc_auc(targets: Sequence[Any], scores: Sequence[float]) -> dict[str, float]:
  """SeqIO score metric: ROC AUC x100 of binary targets (1/True = positive) given scores.

  Exact Mann-Whitney form: the probability that a random positive scores above a random negative,
  a tie counting one half (average ranks), which equals the trapezoidal area under the ROC curve.
  """
  _check_lengths(targets, scores)
  y = np.asarray(targets)
  if not np.isin(y, (0, 1)).all():
    raise ValueError(f"roc_auc targets must be 0/1 or bool, got values {np.unique(y)[:5]}")
  y = y.astype(bool)
  s = np.asarray(scores, np.float64)
  pos, neg = int(y.sum()), int((~y).sum())
  if pos == 0 or neg == 0:
    raise ValueError(f"roc_auc needs both classes; got {pos} positives and {neg} negatives")
  order = np.argsort(s, kind="mergesort")
  ranks = np.empty(len(s))
  ranks[order] = np.arange(1, len(s) + 1)
  sorted_s = s[order]
  # Tied scores share the mean of their ranks.
  _, start, count = np.unique(sorted_s, return_index=True, return_counts=True)
  for a, c in zip(start, count):
    if c > 1:
      ranks[order[a:a + c]] = a + (c + 1) / 2.0
  u = ranks[y].sum() - pos * (pos + 1) / 2.0
  return {"auc_roc": 100.0 * u / (pos * neg)}


def binary_choice_auc(targets: Sequence[Any], scores: Sequence[Sequence[float]]
                      ) -> dict[str, float]:
  """SeqIO score metric for two candidates (e.g. "no", "yes"): ROC AUC of the binary targets
  with score = log p(candidate 1) - log p(candidate 0)."""
  return roc_auc(targets, [s[1] - s[0] for s in scores])


# ----------------------------------------------------------------------------- extractive QA


def normalize_squad_answer(text: str) -> str:
  """SQuAD's normalisation: lowercase, drop punctuation and articles, squeeze whitespace."""
  text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def _squad_f1(prediction: str, target: str) -> float:
  pred, gold = normalize_squad_answer(prediction).split(), normalize_squad_answer(target).split()
  if not pred or not gold:                         # SQuAD 2.0 rule: both empty scores 1
    return float(pred == gold)
  same = sum((collections.Counter(pred) & collections.Counter(gold)).values())
  if same == 0:
    return 0.0
  precision, recall = same / len(pred), same / len(gold)
  return 2 * precision * recall / (precision + recall)


def squad_em_f1(targets: Sequence[Any], predictions: Sequence[str]) -> dict[str, float]:
  """SeqIO metric: exact match and token F1 (x100), each the max over an example's answers.

  targets: per example, an answer string or a list of acceptable answers.
  """
  _check_lengths(targets, predictions)
  em, f1 = [], []
  for t, p in zip(targets, predictions):
    answers = [t] if isinstance(t, str) else list(t)
    if not answers:
      raise ValueError("squad_em_f1: every target needs at least one answer")
    em.append(max(float(normalize_squad_answer(p) == normalize_squad_answer(a))
                  for a in answers))
    f1.append(max(_squad_f1(p, a) for a in answers))
  return {"em": 100.0 * float(np.mean(em)), "f1": 100.0 * float(np.mean(f1))}


def _check_lengths(targets: Sequence[Any], predictions: Sequence[Any]) -> None:
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions; they must "
                     "pair up one to one")
  if not len(targets):
    raise ValueError("no examples to evaluate")


# ----------------------------------------------------------------------------- per example

def per_example_scores(metric_fns: Sequence[Any], targets: Sequence[Any],
                       outputs: Sequence[Any]) -> list[dict[str, float]]:
  """Per example, the score each metric gives it on its own scale, for reports: "vqa" (0-1,
  the official per-question accuracy), "cider" (x100), "exact" (0/1 against the references),
  "correct" (0/1: the top-scored candidate is the label). `outputs` are predictions
  (generate) or per-candidate scores (score)."""
  rows: list[dict[str, float]] = [{} for _ in targets]
  for fn in metric_fns:
    if fn is vqa_accuracy:
      columns = {"vqa": [vqa_score(p, refs) for refs, p in zip(targets, outputs)]}
    elif fn in (coco_caption_metrics, cider):
      columns = {"cider": cider_per_example(targets, outputs)}
    elif fn in (first_reference_accuracy, accuracy, bleu_4):
      columns = {}
    elif fn in (rank_accuracy, binary_choice_auc):
      columns = {"correct": [float(int(np.argmax(s)) == int(t)) for t, s in zip(targets, outputs)]}
    else:
      continue
    for name, values in columns.items():
      for row, value in zip(rows, values):
        row[name] = float(value)
  if outputs and isinstance(outputs[0], str):
    for row, refs, p in zip(rows, targets, outputs):
      refs = [refs] if isinstance(refs, str) else refs
      row["exact"] = float(p.strip() in [r.strip() for r in refs])
  return rows
