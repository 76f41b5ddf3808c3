"""VQA accuracy against a transcription of the official evaluation (GT-Vision-Lab/VQA
vqaEval.py at a013f00, 2021-03-11, in vqa_official_transcription.py): hand-computed cases, then
thousands of seeded random questions that must score bit-identically."""
import random

import pytest

from kosmos_jax.evaluation import metrics as metrics_lib
from tests.evaluation import vqa_official_transcription as official

N_CASES = 6000


# ----------------------------------------------------------------------------- by hand

@pytest.mark.parametrize("prediction, answers, expected", [
    # All annotators agree: nothing but the whitespace strip on either side, so the prediction
    # must be the stored answer verbatim.
    ("two", ["two"] * 10, 1.0),
    ("2", ["two"] * 10, 0.0),              # no number-word mapping when all agree
    ("two", ["2"] * 10, 0.0),
    ("Yes", ["yes"] * 10, 0.0),            # no lowercasing either
    ("yes.", ["yes"] * 10, 0.0),           # nor period stripping
    ("the dog", ["dog"] * 10, 0.0),        # nor article removal
    ("don't", ["dont"] * 10, 0.0),         # nor contractions
    (" yes\n", ["yes", " yes", "yes\t", "\nyes "] + ["yes"] * 6, 1.0),   # stripped: all agree
    ("red  car", ["red  car"] * 10, 1.0),  # inner whitespace kept verbatim
    ("red car", ["red  car"] * 10, 0.0),
    # Annotators disagree: both sides get processPunctuation then processDigitArticle.
    # 3 "two" -> "2", 7 "3"; prediction "2". Leaving out a "2" leaves 2 matches (2/3), leaving
    # out a "3" leaves 3 (1): (3 * 2/3 + 7 * 1) / 10.
    ("2", ["two"] * 3 + ["3"] * 7, 0.9),
    ("Two.", ["2"] * 3 + ["3"] * 7, 0.9),
    # "the dog", "dog", "Dog." all become "dog": 4 of them, so each leave-one-out set keeps >= 3.
    ("A dog", ["the dog", "dog", "Dog.", "dog"] + ["cat"] * 6, 1.0),
    # "dont" -> "don't" on the annotators' side too: (3 * 2/3 + 7 * 1) / 10.
    ("don't", ["dont"] * 3 + ["no"] * 7, 0.9),
    # "1,000" -> "1000" (a digit,digit comma deletes every mark); "1.5" keeps its period.
    ("1000", ["1,000"] * 5 + ["999"] * 5, 1.0),
    ("1.5", ["1.5."] * 2 + ["2"] * 8, (2 * 1 / 3 + 8 * 2 / 3) / 10),
    # Only inner whitespace differs: disagree, then split/join makes them equal.
    ("red car", ["red  car"] * 5 + ["red car"] * 5, 1.0),
    # One match: 9 annotators keep it (1/3), the matching one does not (0).
    ("cat", ["cat"] + ["dog"] * 9, 0.3),
    # Fewer than 10 answers: the average is over however many there are. yes, yes, no: leaving
    # out a "yes" leaves 1 match (1/3, twice), leaving out "no" leaves 2 (2/3): 4/9.
    ("yes", ["yes", "yes", "no"], (1 / 3 + 1 / 3 + 2 / 3) / 3),
    ("no", ["yes", "no"], (1 / 3 + 0) / 2),
])
def test_hand_computed(prediction, answers, expected):
  assert official.evaluate_question(answers, prediction) == pytest.approx(expected, abs=1e-12)
  assert metrics_lib.vqa_score(prediction, answers) == pytest.approx(expected, abs=1e-12)


def test_process_punctuation_details():
  # re.UNICODE (32) is passed as sub's count: only the first 32 stray periods go.
  assert metrics_lib.vqa_process_punctuation("." * 40) == "." * 8
  assert official.process_punctuation("." * 40) == "." * 8
  # Python 2's \d is ASCII only: an Arabic-Indic "3.5" loses its period, "3.5" keeps it.
  assert metrics_lib.vqa_process_punctuation("\u0663.\u0665") == "\u0663\u0665"
  assert metrics_lib.vqa_process_punctuation("3.5") == "3.5"
  # A mark next to a space anywhere in the text is deleted everywhere, else it becomes a space.
  assert metrics_lib.vqa_process_punctuation("a-b - c") == "ab  c"
  assert metrics_lib.vqa_process_punctuation("a-b") == "a b"


def test_normalize_vqa_answer_is_full_processing():
  # The form VQAv2 annotations are stored in (used by readers and the shapes benchmark).
  assert metrics_lib.normalize_vqa_answer("  The Two\tDogs!\n") == "2 dogs"
  assert metrics_lib.normalize_vqa_answer("isnt it") == "isn't it"


# ----------------------------------------------------------------------------- generated

_WORDS = ["dog", "cat", "red", "blue", "yes", "no", "left", "right", "man", "tennis", "pizza",
          "apple", "orange", "umbrella", "car", "frisbee", "none", "nothing", "it", "black"]
_NUMBER_WORDS = ["zero", "none", "one", "two", "three", "four", "five", "six", "seven", "eight",
                 "nine", "ten", "eleven", "twenty"]
_NUMBERS = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "20", "100"]
_DECIMALS = ["1.5", "0.5", "3.14", "2.0", ".5", "1.", "10.25"]
_COMMA_NUMBERS = ["1,000", "10,000", "1,5", "2,500,000", "1, 000", "1 ,000"]
_CONTRACTIONS = ["dont", "don't", "isnt", "isn't", "cant", "can't", "im", "Im", "I'm", "ive",
                 "thats", "that's", "wont", "won't", "oclock", "o'clock", "yall", "somebody'd",
                 "somebodyd", "its", "it's", "lets", "let's", "hes", "he's", "shouldnt've"]
_ARTICLES = ["a", "an", "the", "A", "An", "The", "THE"]
_PUNCT = list(";/[]\"{}()=+\\_->@<`,?!") + [".", "'", ":", "*", "#", "$", "%", "&", "..."]
_SPACES = [" ", "  ", "\t", "\n", " \t ", "\r", "\u00a0"]


def _token(rng: random.Random) -> str:
  pool = rng.choice([_WORDS, _WORDS, _NUMBER_WORDS, _NUMBERS, _DECIMALS, _COMMA_NUMBERS,
                     _CONTRACTIONS])
  return rng.choice(pool)


def _case(rng: random.Random, text: str) -> str:
  r = rng.random()
  if r < 0.6:
    return text
  if r < 0.75:
    return text.upper()
  if r < 0.9:
    return text.capitalize()
  return "".join(c.upper() if rng.random() < 0.5 else c for c in text)


def _decorate(rng: random.Random, text: str) -> str:
  """A surface variant of an answer: articles, punctuation, case, whitespace."""
  words = text.split(" ")
  if rng.random() < 0.3:
    words.insert(0, rng.choice(_ARTICLES))
  if rng.random() < 0.15 and len(words) > 1:
    words.insert(rng.randrange(1, len(words)), rng.choice(_ARTICLES))
  sep = " " if rng.random() < 0.8 else rng.choice(_SPACES + [", ", ",", "/", "-", " - ", "."])
  text = sep.join(words)
  r = rng.random()
  if r < 0.2:
    text += rng.choice([".", "!", "?", "...", " .", ",", "'", ")"])
  elif r < 0.3:
    p = rng.choice(_PUNCT)
    text = p + text + (p if rng.random() < 0.5 else "")
  elif r < 0.35:
    i = rng.randrange(len(text) + 1)
    text = text[:i] + rng.choice(_PUNCT) + text[i:]
  elif r < 0.37:
    text += "." * rng.randrange(30, 40)           # past periodStrip's count of 32
  text = _case(rng, text)
  if rng.random() < 0.3:
    text = rng.choice(_SPACES + [""]) + text + rng.choice(_SPACES + [""])
  return text


def _base(rng: random.Random) -> str:
  return " ".join(_token(rng) for _ in range(rng.choice([1, 1, 1, 2, 2, 3])))


def _question(rng: random.Random) -> tuple[list[str], str]:
  """(annotators' answers, prediction), in one of several agreement patterns."""
  n = 10 if rng.random() < 0.7 else rng.randrange(2, 10)
  kind = rng.randrange(6)
  bases = [_base(rng) for _ in range(rng.randrange(1, 4))]
  if kind == 0:                                  # all agree, verbatim
    answers = [_decorate(rng, bases[0])] * n
  elif kind == 1:                                # agree up to surrounding whitespace
    a = _decorate(rng, bases[0]).strip() or "x"
    answers = [rng.choice(["", " ", "\n", "\t "]) + a + rng.choice(["", " ", "\t", "\n"])
               for _ in range(n)]
  elif kind == 2:                                # same base, different surface forms
    answers = [_decorate(rng, bases[0]) for _ in range(n)]
  elif kind == 3:                                # a majority verbatim, a few others
    major = _decorate(rng, bases[0])
    answers = [major if rng.random() < 0.7 else _decorate(rng, rng.choice(bases))
               for _ in range(n)]
  elif kind == 4:                                # a handful of bases, decorated
    answers = [_decorate(rng, rng.choice(bases)) for _ in range(n)]
  else:                                          # all different
    answers = [_decorate(rng, _base(rng)) for _ in range(n)]
  r = rng.random()
  if r < 0.35:
    prediction = rng.choice(answers)             # an annotator's answer verbatim
  elif r < 0.6:
    prediction = official.process_digit_article(official.process_punctuation(
        rng.choice(answers).strip()))            # one normalised
  elif r < 0.9:
    prediction = _decorate(rng, rng.choice(bases))
  else:
    prediction = _decorate(rng, _base(rng))
  return answers, prediction


def _cases(seed: int = 20240611, n: int = N_CASES) -> list[tuple[list[str], str]]:
  rng = random.Random(seed)
  return [_question(rng) for _ in range(n)]


def test_generated_cases_cover_the_interesting_regimes():
  cases = _cases()
  agree = [len({a.replace("\n", " ").replace("\t", " ").strip() for a in answers}) == 1
           for answers, _ in cases]
  scores = [official.evaluate_question(a, p) for a, p in cases]
  assert len(cases) == N_CASES
  assert 0.2 < sum(agree) / len(cases) < 0.6                   # both branches, plenty of each
  assert sum(len(a) < 10 for a, _ in cases) > 1000             # fewer than 10 answers too
  for value in (0.0, 1.0):
    assert scores.count(value) > 300
  assert sum(0.0 < s < 1.0 for s in scores) > 500              # partial credit
  # Cases where the two branches matter: an agreeing question whose prediction only matches
  # after normalisation, and a disagreeing one whose answers only match after it.
  assert sum(g and s == 0.0 and metrics_lib.normalize_vqa_answer(p) in
             {metrics_lib.normalize_vqa_answer(x) for x in a}
             for g, s, (a, p) in zip(agree, scores, cases)) > 100
  assert sum(not g and s > 0.0 and p.strip() not in {x.strip() for x in a}
             for g, s, (a, p) in zip(agree, scores, cases)) > 100


def test_vqa_score_equals_official_on_generated_cases():
  mismatches = []
  for answers, prediction in _cases():
    ours = metrics_lib.vqa_score(prediction, answers)
    ref = official.evaluate_question(answers, prediction)
    if ours != ref:
      mismatches.append((prediction, answers, ours, ref))
  assert not mismatches, f"{len(mismatches)} of {N_CASES} differ, e.g. {mismatches[:3]}"


def test_processing_functions_equal_official_on_generated_answers():
  texts = [t for answers, p in _cases(seed=7, n=2000) for t in answers[:3] + [p]]
  for t in texts:
    assert metrics_lib.vqa_process_punctuation(t) == official.process_punctuation(t), repr(t)
    assert metrics_lib.vqa_process_digit_article(t) == official.process_digit_article(t), repr(t)
    stripped = t.replace("\n", " ").replace("\t", " ").strip()
    assert metrics_lib.normalize_vqa_answer(t) == official.process_digit_article(
        official.process_punctuation(stripped)), repr(t)


def test_vqa_accuracy_equals_official_overall():
  cases = _cases()
  for start in range(0, N_CASES, 1000):          # several batches, as in chunked evaluation
    chunk = cases[start:start + 1000]
    got = metrics_lib.vqa_accuracy([a for a, _ in chunk], [p for _, p in chunk])
    overall, rounded = official.overall_accuracy(
        [official.evaluate_question(a, p) for a, p in chunk])
    assert got == {"vqa_accuracy": overall}
    assert round(got["vqa_accuracy"], 2) == rounded
