"""Test reference: a line-by-line transcription of the official VQA accuracy, per question.

Transcribes GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation/vqaEval.py, at commit
a013f0043c1e2cdc995922dfe257f7149aa9af06 (2021-03-11, "Fixed processing answers bug", the
latest): the tables of `VQAEval.__init__`, `processPunctuation`, `processDigitArticle`, the body
of the per-question loop of `evaluate` and the overall number of `setAccuracy`, in snake_case.
It is kept deliberately literal (ugly where the original is) and independent of
kosmos_jax.evaluation.metrics, which the tests compare against it.

Two things the Python 2 original does implicitly are made explicit for Python 3:
- its regexes are byte-string patterns compiled without re.UNICODE, so in Python 2 `\\d` is
  [0-9] only (checked with Python 2.7.18: u"\\u0663.\\u0665" loses its period): re.ASCII here;
- `periodStrip.sub("", outText, re.UNICODE)` passes re.UNICODE (32) as sub's *count*.
Unicode-table details of Python 2.7's unicode.lower()/split() (e.g. u"\\u0130".lower() == u"i",
U+180E as whitespace) are not reproduced.
"""
import re

# ---------------------------------------------------------------- VQAEval.__init__ tables

CONTRACTIONS = {"aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't", \
                "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", \
                "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've", \
                "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", \
                "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", \
                "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", \
                "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't", \
                "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", \
                "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", \
                "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", \
                "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've", \
                "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've", \
                "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd", "thered've": "there'd've", \
                "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", \
                "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", \
                "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're", \
                "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've", \
                "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", \
                "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've", \
                "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've", \
                "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", \
                "youll": "you'll", "youre": "you're", "youve": "you've"}
MANUAL_MAP = {'none': '0',
              'zero': '0',
              'one': '1',
              'two': '2',
              'three': '3',
              'four': '4',
              'five': '5',
              'six': '6',
              'seven': '7',
              'eight': '8',
              'nine': '9',
              'ten': '10'
              }
ARTICLES = ['a',
            'an',
            'the'
            ]

PERIOD_STRIP = re.compile("(?!<=\\d)(\\.)(?!\\d)", re.ASCII)
COMMA_STRIP = re.compile("(\\d)(\\,)(\\d)", re.ASCII)
PUNCT = [';', r"/", '[', ']', '"', '{', '}',
         '(', ')', '=', '+', '\\', '_', '-',
         '>', '<', '@', '`', ',', '?', '!']


# ---------------------------------------------------------------- processPunctuation

def process_punctuation(in_text):
  out_text = in_text
  for p in PUNCT:
    if (p + ' ' in in_text or ' ' + p in in_text) or (re.search(COMMA_STRIP, in_text) != None):
      out_text = out_text.replace(p, '')
    else:
      out_text = out_text.replace(p, ' ')
  out_text = PERIOD_STRIP.sub("",
                              out_text,
                              int(re.UNICODE))     # sic: the count argument, 32
  return out_text


# ---------------------------------------------------------------- processDigitArticle

def process_digit_article(in_text):
  out_text = []
  temp_text = in_text.lower().split()
  manual_map = dict(MANUAL_MAP)      # the original's setdefault grows self.manualMap with
  for word in temp_text:             # identity entries; a fresh copy keeps that harmless
    word = manual_map.setdefault(word, word)
    if word not in ARTICLES:
      out_text.append(word)
    else:
      pass
  for word_id, word in enumerate(out_text):
    if word in CONTRACTIONS:
      out_text[word_id] = CONTRACTIONS[word]
  out_text = ' '.join(out_text)
  return out_text


# ---------------------------------------------------------------- evaluate, one question

def evaluate_question(gt_answer_strings, res_answer):
  """`avgGTAcc` of `evaluate` for one question: the annotators' answers and the prediction.

  The annotation's answer dicts are rebuilt as VQAv2 stores them (a distinct answer_id each),
  so that `item != gtAnsDatum` leaves out exactly that one annotator, as on VQAv2.
  """
  answers = [{'answer': a, 'answer_confidence': 'yes', 'answer_id': i + 1}
             for i, a in enumerate(gt_answer_strings)]
  for ans_dic in answers:
    ans_dic['answer'] = ans_dic['answer'].replace('\n', ' ')
    ans_dic['answer'] = ans_dic['answer'].replace('\t', ' ')
    ans_dic['answer'] = ans_dic['answer'].strip()
  res_ans = res_answer
  res_ans = res_ans.replace('\n', ' ')
  res_ans = res_ans.replace('\t', ' ')
  res_ans = res_ans.strip()
  gt_acc = []
  gt_answers = [ans['answer'] for ans in answers]

  if len(set(gt_answers)) > 1:
    for ans_dic in answers:
      ans_dic['answer'] = process_punctuation(ans_dic['answer'])
      ans_dic['answer'] = process_digit_article(ans_dic['answer'])
    res_ans = process_punctuation(res_ans)
    res_ans = process_digit_article(res_ans)

  for gt_ans_datum in answers:
    other_gt_ans = [item for item in answers if item != gt_ans_datum]
    matching_ans = [item for item in other_gt_ans if item['answer'] == res_ans]
    acc = min(1, float(len(matching_ans)) / 3)
    gt_acc.append(acc)
  avg_gt_acc = float(sum(gt_acc)) / len(gt_acc)
  return avg_gt_acc


# ---------------------------------------------------------------- setAccuracy, overall

def overall_accuracy(acc_qa, n=2):
  """`accuracy['overall']` of `setAccuracy`: (unrounded, rounded to n decimals as reported)."""
  overall = 100 * float(sum(acc_qa)) / len(acc_qa)
  return overall, round(overall, n)
