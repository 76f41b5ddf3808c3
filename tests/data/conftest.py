"""Fixtures shared by the data tests: a small SentencePiece model and an isolated cache dir."""
import os

import numpy as np
import pytest

WORDS = ("the a red green blue circle square triangle cross at top left right center of and "
         "image photo is there how many what colour question answer yes no one two three "
         "naïve café straße über 123 45 hello world picture shows").split()


def write_corpus(path, num_lines=3000, seed=0):
  rng = np.random.RandomState(seed)
  with open(path, "w") as f:
    for _ in range(num_lines):
      words = rng.choice(WORDS, rng.randint(3, 12))
      f.write(" ".join(words) + rng.choice([".", "?", "!", ","]) + "\n")


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
  """Keeps the shapes vocabulary cache of the tests away from the user's ~/.cache."""
  path = str(tmp_path_factory.mktemp("kosmos_cache"))
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("KOSMOS_JAX_CACHE", path)
    yield path


@pytest.fixture(scope="session")
def spm_model(tmp_path_factory):
  """A unigram SentencePiece model trained by the vocab CLI on a small random corpus."""
  from kosmos_jax.data import vocab
  directory = tmp_path_factory.mktemp("spm")
  corpus = os.path.join(directory, "corpus.txt")
  write_corpus(corpus)
  prefix = os.path.join(directory, "small")
  assert vocab.run(["vocab", "train", f"--input={corpus}", "--vocab_size=70",
                    f"--output={prefix}"]).startswith("wrote ")
  return prefix + ".model"


@pytest.fixture
def corpus_writer():
  """`write_corpus(path, num_lines, seed)` for tests that train their own models."""
  return write_corpus


@pytest.fixture(scope="session")
def small_vocab(spm_model):
  from kosmos_jax.data import vocab
  return vocab.KosmosVocabulary(spm_model)
