"""The Kosmos vocabulary: SentencePiece pieces in the fairseq / Hugging Face id layout.

Layout (docs/data.md §11), for a SentencePiece model with n pieces (<unk>, <s>, </s>, ...):
  0 <s>, 1 <pad>, 2 </s>, 3 <unk>          fairseq specials
  4 .. n                                    spm pieces 3 .. n-1 (id = spm id + 1)
  n+1 <mask>
  n+2 .. n+6 </doc> <image> </image> </chunk> </line>          -> n+7 ids (64,007 for Kosmos-1)
  optional Kosmos-2 grounding tags and 1024 <patch_index_XXXX>  -> n+1037 ids (65,037)
Special-token strings inside text encode to their ids, as the HF tokenizer does.

Command line: `python -m kosmos_jax.data.vocab train --input=FILES --vocab_size=N --output=PREFIX`
trains a SentencePiece model with the control ids this layout expects.
"""
from __future__ import annotations

import functools
import hashlib
import re
from typing import Iterable, Optional, Sequence

from absl import app
from absl import flags
import seqio
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2
import tensorflow as tf
import tensorflow_text as tf_text

from kosmos_jax import cli
from kosmos_jax import paths

FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")   # ids 0..3
FAIRSEQ_OFFSET = 1                                     # fairseq id = spm id + 1 for real pieces
MASK_TOKEN = "<mask>"
KOSMOS1_TAGS = ("</doc>", "<image>", "</image>", "</chunk>", "</line>")
KOSMOS2_TAGS = ("<phrase>", "</phrase>", "<object>", "</object>",
                "</delimiter_of_multi_objects/>", "<grounding>")
NUM_PATCH_INDEX_TOKENS = 1024
# The SentencePiece control ids this layout assumes (what `train_sentencepiece` produces).
SPM_UNK_ID, SPM_BOS_ID, SPM_EOS_ID = 0, 1, 2
# Splits text around special tokens inside TF; a byte string that real text does not contain.
_CHUNK_SEPARATOR = "\x00\x01kosmos-special\x01\x00"


def patch_index_token(index: int) -> str:
  return f"<patch_index_{index:04d}>"


@functools.lru_cache(maxsize=16)
def _load_spm(model_bytes: bytes) -> spm.SentencePieceProcessor:
  processor = spm.SentencePieceProcessor()
  processor.LoadFromSerializedProto(model_bytes)
  return processor


class KosmosVocabulary(seqio.Vocabulary):
  """A seqio Vocabulary over SentencePiece with the Kosmos special tokens (fairseq/HF ids).

  Args:
    sentencepiece_model_file: a model trained with unk=0, bos=1, eos=2 and no pad piece.
    grounding_tokens: add the Kosmos-2 tags and 1024 patch-index tokens (65,037-style layout).
    image_placeholder_id: id written at image placeholder positions; defaults to `<image>`
      (the Kosmos-1/fairseq convention). The model also gets an explicit placeholder mask, so
      this only matters for tokenisation parity.
  """

  def __init__(self, sentencepiece_model_file: str, grounding_tokens: bool = False,
               image_placeholder_id: Optional[int] = None):
    self._model_file = sentencepiece_model_file
    self._grounding_tokens = grounding_tokens
    self._image_placeholder_id = image_placeholder_id
    self._model_bytes: Optional[bytes] = None
    self._cache: dict = {}   # derived tables, rebuilt after unpickling
    super().__init__(extra_ids=0)

  # --- loading -------------------------------------------------------------------------------

  def __getstate__(self):
    # gin deep-copies configurable arguments; keep only what rebuilds the vocabulary.
    state = self.__dict__.copy()
    state["_model_bytes"] = None
    state["_cache"] = {}
    return state

  def _cached(self, key, build):
    if key not in self._cache:
      self._cache[key] = build()
    return self._cache[key]

  def _read_model_bytes(self) -> bytes:
    """Reads the SentencePiece model file (subclasses may build it first)."""
    try:
      with tf.io.gfile.GFile(self._model_file, "rb") as f:
        return f.read()
    except tf.errors.NotFoundError as e:
      raise FileNotFoundError(
          f"SentencePiece model {self._model_file!r} not found; train one with "
          "`python -m kosmos_jax.data.vocab train --input=FILES --vocab_size=N "
          "--output=PREFIX`") from e

  @property
  def sp_model(self) -> bytes:
    if self._model_bytes is None:
      model_bytes = self._read_model_bytes()
      processor = _load_spm(model_bytes)
      ids = (processor.unk_id(), processor.bos_id(), processor.eos_id(), processor.pad_id())
      if ids != (SPM_UNK_ID, SPM_BOS_ID, SPM_EOS_ID, -1):
        raise ValueError(
            f"{self._model_file}: SentencePiece ids (unk, bos, eos, pad) are {ids}; the Kosmos "
            "layout needs (0, 1, 2, -1). Retrain with `python -m kosmos_jax.data.vocab train`.")
      self._model_bytes = model_bytes
    return self._model_bytes

  @property
  def tokenizer(self) -> spm.SentencePieceProcessor:
    """The Python SentencePiece processor (spm ids, not Kosmos ids)."""
    return _load_spm(self.sp_model)

  @property
  def sentencepiece_model_file(self) -> str:
    return self._model_file

  @property
  def num_spm_pieces(self) -> int:
    return self.tokenizer.GetPieceSize()

  # --- ids -----------------------------------------------------------------------------------

  @property
  def special_tokens(self) -> dict[str, int]:
    """Every special token string and its id (the fairseq four, <mask>, tags, patch indices)."""
    return dict(self._specials())

  def _specials(self) -> dict[str, int]:
    return self._cached("specials", lambda: dict(
        _special_tokens(self.num_spm_pieces, self._grounding_tokens)))

  def token_to_id(self, token: str) -> int:
    """Id of a special token or SentencePiece piece; raises for unknown strings."""
    specials = self._specials()
    if token in specials:
      return specials[token]
    spm_id = self.tokenizer.PieceToId(token)
    if spm_id == SPM_UNK_ID and token != self.tokenizer.IdToPiece(SPM_UNK_ID):
      raise KeyError(f"{token!r} is neither a special token nor a SentencePiece piece")
    return spm_id + FAIRSEQ_OFFSET

  def id_to_token(self, token_id: int) -> str:
    """The string of an id (special token or SentencePiece piece)."""
    return self._id_to_piece_table()[token_id]

  @property
  def bos_id(self) -> int:
    return 0

  @property
  def pad_id(self) -> int:
    return 1

  @property
  def eos_id(self) -> int:
    return 2

  @property
  def unk_id(self) -> int:
    return 3

  @property
  def mask_id(self) -> int:
    return self.num_spm_pieces + FAIRSEQ_OFFSET

  @property
  def eod_id(self) -> int:
    """`</doc>`"""
    return self._specials()["</doc>"]

  @property
  def image_id(self) -> int:
    """`<image>`: opens an image block."""
    return self._specials()["<image>"]

  @property
  def end_image_id(self) -> int:
    """`</image>`: closes an image block."""
    return self._specials()["</image>"]

  @property
  def end_chunk_id(self) -> int:
    return self._specials()["</chunk>"]

  @property
  def end_line_id(self) -> int:
    return self._specials()["</line>"]

  @property
  def image_placeholder_id(self) -> int:
    """Id at the positions whose embeddings are replaced by image embeddings."""
    if self._image_placeholder_id is None:
      return self.image_id
    return self._image_placeholder_id

  @property
  def grounding_tokens(self) -> bool:
    return self._grounding_tokens

  def _grounding_id(self, token: str) -> int:
    if not self._grounding_tokens:
      raise ValueError(f"{token} exists only with KosmosVocabulary(grounding_tokens=True)")
    return self._specials()[token]

  @property
  def phrase_id(self) -> int:
    return self._grounding_id("<phrase>")

  @property
  def end_phrase_id(self) -> int:
    return self._grounding_id("</phrase>")

  @property
  def object_id(self) -> int:
    return self._grounding_id("<object>")

  @property
  def end_object_id(self) -> int:
    return self._grounding_id("</object>")

  @property
  def delimiter_id(self) -> int:
    return self._grounding_id("</delimiter_of_multi_objects/>")

  @property
  def grounding_id(self) -> int:
    return self._grounding_id("<grounding>")

  def patch_index_id(self, index: int) -> int:
    if not 0 <= index < NUM_PATCH_INDEX_TOKENS:
      raise ValueError(f"patch index {index} outside [0, {NUM_PATCH_INDEX_TOKENS})")
    return self._grounding_id(patch_index_token(index))

  @property
  def _base_vocab_size(self) -> int:
    extra = len(KOSMOS2_TAGS) + NUM_PATCH_INDEX_TOKENS if self._grounding_tokens else 0
    return self.num_spm_pieces + FAIRSEQ_OFFSET + 1 + len(KOSMOS1_TAGS) + extra

  # --- encode / decode -----------------------------------------------------------------------

  def _special_pattern(self) -> str:
    def build():
      tokens = sorted(self._specials(), key=len, reverse=True)
      return "(" + "|".join(re.escape(t) for t in tokens) + ")"
    return self._cached("pattern", build)

  def _encode(self, s: str) -> list[int]:
    specials = self._specials()
    ids = []
    pattern = self._cached("compiled", lambda: re.compile(self._special_pattern()))
    for chunk in pattern.split(s):
      if chunk in specials:
        ids.append(specials[chunk])
      elif chunk:
        ids.extend(_spm_to_kosmos(i) for i in self.tokenizer.EncodeAsIds(chunk))
    return ids

  def _decode(self, ids: Iterable[int]) -> str:
    table = self._id_to_piece_table(for_decoding=True)
    text = "".join(table[int(i)] for i in ids)
    return text.replace("\u2581", " ").strip()

  @property
  def tf_tokenizer(self) -> tf_text.SentencepieceTokenizer:
    """One eagerly created TF tokenizer, captured by every graph that tokenizes."""
    return self._eager_resource(
        "tf_tokenizer", lambda: tf_text.SentencepieceTokenizer(model=self.sp_model))

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    """Scalar string -> int32 [tokens]; rank-1 strings -> ragged int32 [batch, tokens]."""
    s = tf.convert_to_tensor(s, tf.string)
    scalar = s.shape.rank == 0
    # Isolate special tokens: surround each with a separator, then split (much lighter than
    # tf_text.regex_split, which matters when tf.data traces and runs this per example).
    marked = tf.strings.regex_replace(tf.reshape(s, [-1]), self._special_pattern(),
                                      _CHUNK_SEPARATOR + r"\1" + _CHUNK_SEPARATOR)
    chunks = tf.strings.split(marked, _CHUNK_SEPARATOR)               # [batch, chunks] ragged
    flat_chunks = chunks.flat_values                                  # [all chunks]
    special_ids = self._special_table().lookup(flat_chunks)           # -1 for plain text
    is_special = special_ids >= 0
    spm_ids = self.tf_tokenizer.tokenize(tf.where(is_special, "", flat_chunks))
    values = tf.cast(spm_ids.flat_values, tf.int32)                   # [pieces]
    values = tf.where(values == SPM_UNK_ID, self.unk_id, values + FAIRSEQ_OFFSET)
    # Each chunk contributes its pieces, or its one special id; place both by scatter (fewer
    # ops than ragged concatenation, which matters for tracing speed in tf.data).
    chunk_lengths = tf.cast(spm_ids.row_lengths(), tf.int32) + tf.cast(is_special, tf.int32)
    chunk_starts = tf.cumsum(chunk_lengths, exclusive=True)
    piece_chunk = tf.cast(spm_ids.value_rowids(), tf.int32)
    piece_offset = tf.range(tf.size(values)) - tf.gather(
        tf.cast(spm_ids.row_starts(), tf.int32), piece_chunk)
    positions = tf.concat([tf.gather(chunk_starts, piece_chunk) + piece_offset,
                           tf.boolean_mask(chunk_starts, is_special)], axis=0)
    ids = tf.scatter_nd(positions[:, tf.newaxis],
                        tf.concat([values, tf.boolean_mask(special_ids, is_special)], axis=0),
                        [tf.reduce_sum(chunk_lengths)])               # [all tokens]
    if scalar:
      return ids
    row_lengths = tf.math.segment_sum(tf.cast(chunk_lengths, tf.int64), chunks.value_rowids())
    row_lengths = tf.pad(row_lengths, [[0, tf.size(s, tf.int64) - tf.size(row_lengths,
                                                                         tf.int64)]])
    return tf.RaggedTensor.from_row_lengths(ids, row_lengths, validate=False)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """int ids [..., tokens] -> strings [...]."""
    pieces = tf.gather(tf.constant(self._id_to_piece_table(for_decoding=True)),
                       tf.cast(ids, tf.int32))
    text = tf.strings.reduce_join(pieces, axis=-1)
    return tf.strings.strip(tf.strings.regex_replace(text, "\u2581", " "))

  def _special_table(self) -> tf.lookup.StaticHashTable:
    specials = self._specials()
    return self._eager_resource("special_table", lambda: tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(list(specials)), tf.constant(list(specials.values()), tf.int32)),
        default_value=-1))

  def _eager_resource(self, key: str, build):
    """A TF resource built once eagerly and captured by functions (tf.data, tf.function);
    a plain TF1 graph, which cannot capture eager tensors, gets its own copy."""
    if not (tf.executing_eagerly() or tf.inside_function()):
      return build()

    def build_eagerly():
      with tf.init_scope():
        return build()
    return self._cached(key, build_eagerly)

  def _id_to_piece_table(self, for_decoding: bool = False) -> list[str]:
    """String of every id; for decoding, <s>/<pad>/</s> are dropped and <unk> reads ' ⁇ '."""
    return self._cached(("pieces", for_decoding), lambda: self._build_piece_table(for_decoding))

  def _build_piece_table(self, for_decoding: bool) -> list[str]:
    table = [""] * self._base_vocab_size
    for i in range(3, self.num_spm_pieces):
      table[i + FAIRSEQ_OFFSET] = self.tokenizer.IdToPiece(i)
    for token, token_id in self._specials().items():
      table[token_id] = token
    if for_decoding:
      for token in ("<s>", "<pad>", "</s>"):
        table[self._specials()[token]] = ""
      table[self.unk_id] = " \u2047 "
    return table

  def __eq__(self, other) -> bool:
    if not isinstance(other, KosmosVocabulary):
      return False
    return (self.sp_model == other.sp_model and self._grounding_tokens == other._grounding_tokens
            and self.image_placeholder_id == other.image_placeholder_id)

  def __hash__(self) -> int:
    return hash((hashlib.md5(self.sp_model).hexdigest(), self._grounding_tokens))

  def __str__(self) -> str:
    return (f"KosmosVocabulary(file={self._model_file}, size={self.vocab_size}, "
            f"grounding_tokens={self._grounding_tokens})")


def _spm_to_kosmos(spm_id: int) -> int:
  return 3 if spm_id == SPM_UNK_ID else spm_id + FAIRSEQ_OFFSET


@functools.lru_cache(maxsize=16)
def _special_tokens(num_spm_pieces: int, grounding_tokens: bool) -> tuple[tuple[str, int], ...]:
  tokens = [(t, i) for i, t in enumerate(FAIRSEQ_SPECIALS)]
  next_id = num_spm_pieces + FAIRSEQ_OFFSET
  tags = [MASK_TOKEN, *KOSMOS1_TAGS]
  if grounding_tokens:
    tags += [*KOSMOS2_TAGS, *(patch_index_token(i) for i in range(NUM_PATCH_INDEX_TOKENS))]
  for offset, tag in enumerate(tags):
    tokens.append((tag, next_id + offset))
  return tuple(tokens)


# --- training --------------------------------------------------------------------------------

def train_sentencepiece(input_files: Sequence[str], vocab_size: int, output_prefix: str, *,
                        model_type: str = "unigram", character_coverage: float = 0.9995,
                        hard_vocab_limit: bool = True, input_sentence_size: int = 0,
                        seed: int = 0) -> str:
  """Trains a SentencePiece model for the Kosmos layout; returns the `.model` path.

  Control ids are unk=0, bos=1, eos=2 with no pad piece (fairseq adds <pad> itself), so every
  id maps to the layout above. One thread and a fixed seed make training reproducible.
  `hard_vocab_limit=False` lets a small corpus end with fewer pieces than `vocab_size`.
  """
  if not input_files:
    raise ValueError("train_sentencepiece needs at least one input file")
  spm.set_random_generator_seed(seed)
  spm.SentencePieceTrainer.Train(
      input=list(input_files), model_prefix=output_prefix, vocab_size=vocab_size,
      model_type=model_type, character_coverage=character_coverage,
      hard_vocab_limit=hard_vocab_limit, input_sentence_size=input_sentence_size,
      shuffle_input_sentence=input_sentence_size > 0,
      unk_id=SPM_UNK_ID, bos_id=SPM_BOS_ID, eos_id=SPM_EOS_ID, pad_id=-1,
      unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
      num_threads=1, minloglevel=2)
  # Drop the machine-specific paths SentencePiece records, so equal inputs give equal bytes.
  path = output_prefix + ".model"
  proto = sentencepiece_model_pb2.ModelProto()
  with open(path, "rb") as f:
    proto.ParseFromString(f.read())
  del proto.trainer_spec.input[:]
  proto.trainer_spec.model_prefix = ""
  with open(path, "wb") as f:
    f.write(proto.SerializeToString(deterministic=True))
  return path


# ----------------------------------------------------------------------------- command line

COMMANDS = ("train",)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the `train` command's flags on `flag_values` (global FLAGS only as a script)."""
  fv = flag_values
  flags.DEFINE_list("input", None, "comma-separated text files, one sentence per line",
                    flag_values=fv)
  flags.DEFINE_integer("vocab_size", None, "number of SentencePiece pieces", flag_values=fv)
  flags.DEFINE_string("output", None, "output prefix: writes PREFIX.model and PREFIX.vocab",
                      flag_values=fv)
  flags.DEFINE_enum("model_type", "unigram", ["unigram", "bpe", "word", "char"],
                    "SentencePiece model type", flag_values=fv)
  flags.DEFINE_float("character_coverage", 0.9995, "characters covered by the pieces",
                     flag_values=fv)
  flags.DEFINE_bool("soft_vocab_limit", False, "allow fewer pieces than --vocab_size (small "
                    "corpora)", flag_values=fv)
  flags.DEFINE_integer("input_sentence_size", 0, "sample this many sentences (0: use all)",
                       flag_values=fv)
  flags.DEFINE_bool("grounding_tokens", False, "report the size with the Kosmos-2 grounding "
                    "tokens", flag_values=fv)
  flags.DEFINE_integer("seed", 0, "SentencePiece sampling seed", flag_values=fv)
  for name in ("input", "vocab_size", "output"):
    flags.mark_flag_as_required(name, flag_values=fv)


def train_from_flags(fv: flags.FlagValues) -> str:
  """Runs `train` as the parsed flags describe; returns the one-line summary."""
  model = train_sentencepiece(
      [paths.resolve(f) for f in fv.input if f], fv.vocab_size, paths.resolve(fv.output), model_type=fv.model_type,
      character_coverage=fv.character_coverage, hard_vocab_limit=not fv.soft_vocab_limit,
      input_sentence_size=fv.input_sentence_size, seed=fv.seed)
  vocab = KosmosVocabulary(model, grounding_tokens=fv.grounding_tokens)
  return (f"wrote {model}: {vocab.num_spm_pieces} SentencePiece pieces -> Kosmos vocab_size "
          f"{vocab.vocab_size} (image {vocab.image_id}, </image> {vocab.end_image_id})")


def _command(argv: Sequence[str]) -> str:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"usage: python -m kosmos_jax.data.vocab train --input=... "
                         f"--vocab_size=N --output=PREFIX (got {list(argv[1:])})")
  return argv[1]


def run(argv: Sequence[str]) -> str:
  """The CLI on a private flag set (tests, other programs): run(["prog", "train", "--input=..."])."""
  fv = flags.FlagValues()
  define_flags(fv)
  remaining = fv(list(argv))
  _command(remaining)
  return train_from_flags(fv)


def main(argv: Sequence[str]) -> None:
  _command(argv)
  print(train_from_flags(flags.FLAGS))


if __name__ == "__main__":
  define_flags()
  cli.run(main)
