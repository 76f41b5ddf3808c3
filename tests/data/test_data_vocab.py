"""KosmosVocabulary: the fairseq/HF id layout, parity with the HF tokenizer, the training CLI."""
import os
import pickle
import shutil

import numpy as np
import pytest
import sentencepiece as spm
import tensorflow as tf

from kosmos_jax.data import vocab as vocab_lib

TEXTS = [
    "the red circle at the top left.",
    "  hello   world  ",
    "naïve café Straße über",
    "emoji 🙂 and 中文 are unknown",
    "<s> the red </s> blue",
    "a<image>b </image> c <image>  <image> d",
    "x </doc> y </line>z </chunk> <mask> m <pad> <unk>",
    "<grounding> An image of<phrase> a snowman</phrase><object><patch_index_0044>"
    "<patch_index_0863></object>.",
    "</delimiter_of_multi_objects/><patch_index_1023> <patch_index_1024>",
    "Question: what colour is the circle? Answer: red",
    "",
    "   ",
    "123 45 6789",
    "tab\tsep\nnewline",
    "<imag> <image",
    "ab</s>cd<s>",
]


def test_id_layout(spm_model):
  sp = spm.SentencePieceProcessor(model_file=spm_model)
  n = sp.GetPieceSize()
  vocab = vocab_lib.KosmosVocabulary(spm_model)
  assert (vocab.bos_id, vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2, 3)
  assert vocab.mask_id == n + 1
  assert [vocab.eod_id, vocab.image_id, vocab.end_image_id, vocab.end_chunk_id,
          vocab.end_line_id] == list(range(n + 2, n + 7))
  assert vocab.vocab_size == n + 7                      # 64,007 for the 64,000-piece Kosmos spm
  assert vocab.image_placeholder_id == vocab.image_id   # Kosmos-1/fairseq convention
  piece = sp.IdToPiece(10)
  assert vocab.token_to_id(piece) == 11 and vocab.id_to_token(11) == piece
  assert vocab.encode("the") == [sp.EncodeAsIds("the")[0] + 1]
  with pytest.raises(ValueError, match="grounding_tokens=True"):
    _ = vocab.grounding_id

  grounded = vocab_lib.KosmosVocabulary(spm_model, grounding_tokens=True, image_placeholder_id=4)
  assert grounded.vocab_size == n + 7 + 6 + 1024        # 65,037 for Kosmos-2
  assert grounded.phrase_id == n + 7 and grounded.grounding_id == n + 12
  assert grounded.patch_index_id(0) == n + 13 and grounded.patch_index_id(1023) == n + 1036
  assert grounded.image_placeholder_id == 4
  assert grounded.special_tokens["<patch_index_0044>"] == n + 13 + 44


def hf_xlmr_tokenizer(spm_model, directory):
  """transformers' XLM-R tokenizer converted from the SentencePiece model (no Kosmos tokens)."""
  transformers = pytest.importorskip("transformers")
  transformers.logging.set_verbosity_error()
  os.makedirs(directory, exist_ok=True)
  shutil.copy(spm_model, os.path.join(directory, "sentencepiece.bpe.model"))
  return transformers.XLMRobertaTokenizer.from_pretrained(directory)


# The tokens Kosmos2Processor.__init__ adds, in its order (transformers
# models/kosmos2/processing_kosmos2.py), each as AddedToken(lstrip=True, rstrip=False,
# normalized=False).
HF_KOSMOS2_TAG_TOKENS = ["</doc>", "<image>", "</image>", "</chunk>", "</line>", "<phrase>",
                         "</phrase>", "<object>", "</object>", "</delimiter_of_multi_objects/>",
                         "<grounding>"]
HF_PATCH_INDEX_TOKENS = [f"<patch_index_{str(x).zfill(4)}>" for x in range(1024)]


def hf_reference_tokenizer(spm_model, directory):
  """The HF Kosmos-2 tokenizer built offline from the same SentencePiece model.

  Kosmos-2's processor wraps an XLM-R tokenizer (fairseq offset 1, `<mask>` after the pieces)
  and adds the tag and patch-index tokens. transformers' XLMRobertaTokenizer converts the .model
  file (its slow->fast SentencePiece conversion), and the tokens are added as the processor does.
  """
  from transformers import AddedToken
  tokenizer = hf_xlmr_tokenizer(spm_model, directory)
  tokenizer.add_tokens([AddedToken(t, lstrip=True, rstrip=False, normalized=False)
                        for t in HF_KOSMOS2_TAG_TOKENS + HF_PATCH_INDEX_TOKENS])
  return tokenizer


def test_parity_with_hf_kosmos2_tokenizer(spm_model, tmp_path):
  tokenizer = hf_reference_tokenizer(spm_model, str(tmp_path / "hf"))
  vocab = vocab_lib.KosmosVocabulary(spm_model, grounding_tokens=True)
  assert len(tokenizer) == vocab.vocab_size
  for token, token_id in vocab.special_tokens.items():
    assert tokenizer.convert_tokens_to_ids(token) == token_id, token
  batch = vocab.encode_tf(tf.constant(TEXTS)).to_list()
  for text, from_batch in zip(TEXTS, batch):
    expected = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert vocab.encode(text) == expected, text
    assert vocab.encode_tf(tf.constant(text)).numpy().tolist() == expected, text
    assert from_batch == expected, text
  # Special tokens really are exercised: unknown pieces map to <unk>, tags to their ids.
  assert vocab.unk_id in vocab.encode(TEXTS[3])
  assert vocab.encode("<image></image>") == [vocab.image_id, vocab.end_image_id]


@pytest.mark.slow   # importing Kosmos2Processor imports torch (~10 s on 2 cores)
def test_caption_sequence_matches_hf_processor(spm_model, tmp_path):
  """Our converter's caption row equals HF Kosmos2Processor's ids (up to placeholder ids)."""
  from kosmos_jax.data import feature_converters, preprocessors
  from kosmos_jax.data.tasks import output_features
  transformers = pytest.importorskip("transformers")
  tokenizer = hf_xlmr_tokenizer(spm_model, str(tmp_path / "hf"))
  # The real processor (its module imports torch) adds the Kosmos-2 tokens itself here.
  processor = transformers.Kosmos2Processor(transformers.CLIPImageProcessor(), tokenizer)
  assert tokenizer.convert_tokens_to_ids("<patch_index_1023>") == len(tokenizer) - 1
  vocab = vocab_lib.KosmosVocabulary(spm_model, grounding_tokens=True)
  caption, num_image_tokens = "a red circle at the top left", 8
  image = np.zeros((32, 32, 3), np.uint8)
  hf = processor(text=caption, images=image, num_image_tokens=num_image_tokens,
                 add_eos_token=True)
  hf_ids, hf_mask = list(hf["input_ids"]), list(hf["image_embeds_position_mask"])

  ds = tf.data.Dataset.from_tensors({"image": image, "text": caption})
  ds = preprocessors.image_text_to_sequence(ds, output_features(vocab))
  converter = feature_converters.KosmosFeatureConverter(vocab, num_image_tokens, 32, pack=False)
  row = next(converter(ds, feature_converters.task_feature_lengths(40, 1)).as_numpy_iterator())
  num = int((row["decoder_segment_ids"] > 0).sum())
  ours = list(row["decoder_input_tokens"][:num]) + [row["decoder_target_tokens"][num - 1]]
  our_mask = list(row["decoder_image_token_mask"][:num]) + [0]
  assert our_mask == hf_mask
  # HF writes placeholder ids 4..4+K-1 (first_image_token_id = unk + 1), we write <image>.
  assert [o for o, m in zip(ours, our_mask) if not m] == [h for h, m in zip(hf_ids, hf_mask)
                                                          if not m]
  assert [h for h, m in zip(hf_ids, hf_mask) if m] == list(range(4, 4 + num_image_tokens))
  assert all(o == vocab.image_placeholder_id for o, m in zip(ours, our_mask) if m)


def test_decode_round_trip(small_vocab):
  text = "the red circle at the top left."
  ids = small_vocab.encode(text)
  assert small_vocab.decode(ids) == text
  assert small_vocab.decode(ids + [small_vocab.eos_id, 7, 8]) == text   # stops at </s>
  tf_text = small_vocab.decode_tf(tf.constant([ids + [small_vocab.eos_id, 1, 1]]))
  assert tf_text.numpy()[0].decode() == text
  with_image = small_vocab.encode("a <image></image> red")
  assert small_vocab.decode(with_image) == "a<image></image> red"


def test_training_is_reproducible(tmp_path, corpus_writer):
  corpus = str(tmp_path / "corpus.txt")
  corpus_writer(corpus, num_lines=500, seed=3)
  models = []
  for name in ("a", "b"):
    assert vocab_lib.run(["vocab", "train", f"--input={corpus}", "--vocab_size=50",
                          f"--output={tmp_path / name}"]).startswith("wrote ")
    models.append(open(tmp_path / f"{name}.model", "rb").read())
  assert models[0] == models[1]


def test_rejects_other_spm_layouts(tmp_path, corpus_writer):
  corpus = str(tmp_path / "corpus.txt")
  corpus_writer(corpus, num_lines=300)
  spm.SentencePieceTrainer.Train(input=corpus, model_prefix=str(tmp_path / "t5"), vocab_size=40,
                                 pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
  vocab = vocab_lib.KosmosVocabulary(str(tmp_path / "t5.model"))
  with pytest.raises(ValueError, match=r"needs \(0, 1, 2, -1\)"):
    vocab.encode("the")
  with pytest.raises(FileNotFoundError, match="vocab train"):
    vocab_lib.KosmosVocabulary(str(tmp_path / "missing.model")).encode("the")


def test_pickle_keeps_equality(small_vocab):
  copy = pickle.loads(pickle.dumps(small_vocab))
  assert copy == small_vocab and copy.encode("the red") == small_vocab.encode("the red")
