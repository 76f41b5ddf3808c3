"""Data sources for the layouts data teams hold, each a seqio DataSource built from gin:

  webdataset_source          img2dataset WebDataset tars ({key}.jpg/.txt/.json)
  img2dataset_parquet_source img2dataset parquet (image bytes in a `jpg`/`png`/`webp` column)
  mmc4_source                MMC4 jsonl / .jsonl.zip documents + a folder of images
  mmc4_tar_source            OpenFlamingo-style MMC4 tars (base64 images inside the json)
  tfds_source                a prepared TFDS dataset with image and caption features
  text_source                .txt / .txt.gz corpora (documents per line or per blank-line block)
  jsonl_text_source          JSONL text corpora (field configurable)

Shuffled, a source streams `num_epochs` epochs (None: endless, for training), each in a new
seeded order; unshuffled it is one pass in file order (evaluation, inspection).
All shard by file across hosts (by record when there are fewer files than hosts), stream,
shuffle files and a buffer with seeds, checkpoint their exact position, and skip unusable
records counted by reason (`preprocessors.record_counts()`, `data/*` in training metrics).
`FORMATS` tells `python -m kosmos_jax.data.inspect` which task kind each layout feeds.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

import gin

from kosmos_jax.data.sources import mmc4, parquet, records, text_files, tfds_source as tfds_lib
from kosmos_jax.data.sources import webdataset

SplitPatterns = Union[str, Sequence[str], Mapping[str, Union[str, Sequence[str]]]]
# Layout -> the task kind its records feed ("image_text", "interleaved" or "text").
FORMATS = {"webdataset": "image_text", "img2dataset_parquet": "image_text", "mmc4": "interleaved",
           "mmc4_tar": "interleaved", "tfds": "image_text", "text": "text", "jsonl": "text",
           "tfrecord": None}


def _splits(split_to_filepattern: SplitPatterns) -> dict:
  """A pattern (or list) alone is the train split."""
  if isinstance(split_to_filepattern, (str, list, tuple)):
    return {"train": split_to_filepattern}
  return dict(split_to_filepattern)


def _configurable(fn):
  try:
    return gin.configurable(fn, module="kosmos_jax.data")
  except ValueError:   # already registered (a reload)
    return fn


@_configurable
def webdataset_source(split_to_filepattern: SplitPatterns,
                      image_extensions: Sequence[str] = webdataset.IMAGE_EXTENSIONS,
                      text_extension: str = "txt", caption_field: Optional[str] = None,
                      min_image_bytes: int = 0, shuffle_buffer_size: int = 10_000,
                      cycle_length: int = 4,
                      num_epochs: Optional[int] = None) -> records.IndexedFileSource:
  """Image-caption pairs from WebDataset tars (img2dataset's webdataset output)."""
  fmt = webdataset.WebDatasetImageText(image_extensions, text_extension, caption_field,
                                       min_image_bytes)
  return records.IndexedFileSource(_splits(split_to_filepattern), fmt, shuffle_buffer_size,
                                   cycle_length, name="webdataset", num_epochs=num_epochs)


@_configurable
def img2dataset_parquet_source(split_to_filepattern: SplitPatterns,
                               image_column: Optional[str] = None,
                               caption_column: str = "caption", key_column: str = "key",
                               status_column: Optional[str] = "status", min_image_bytes: int = 0,
                               shuffle_buffer_size: int = 10_000,
                               cycle_length: int = 4,
                      num_epochs: Optional[int] = None) -> records.IndexedFileSource:
  """Image-caption pairs from img2dataset parquet files (the image column found by name)."""
  fmt = parquet.Img2DatasetParquet(image_column, caption_column, key_column, status_column,
                                   min_image_bytes)
  return records.IndexedFileSource(_splits(split_to_filepattern), fmt, shuffle_buffer_size,
                                   cycle_length, name="img2dataset_parquet",
                                   num_epochs=num_epochs)


@_configurable
def mmc4_source(split_to_filepattern: SplitPatterns, image_dir: str = gin.REQUIRED,
                assignment: str = "matched", similarity_threshold: Optional[float] = None,
                min_image_bytes: int = 0, max_document_images: Optional[int] = 50,
                shuffle_buffer_size: int = 10_000,
                cycle_length: int = 4,
                num_epochs: Optional[int] = None) -> records.IndexedFileSource:
  """Interleaved documents from MMC4 jsonl(.zip) files and a folder of their images."""
  fmt = mmc4.MMC4Jsonl(image_dir, assignment, similarity_threshold, min_image_bytes,
                       max_document_images)
  return records.IndexedFileSource(_splits(split_to_filepattern), fmt, shuffle_buffer_size,
                                   cycle_length, name="mmc4", num_epochs=num_epochs)


@_configurable
def mmc4_tar_source(split_to_filepattern: SplitPatterns, assignment: str = "hungarian",
                    similarity_threshold: Optional[float] = 0.24,
                    min_image_bytes: int = 10 * 1024, max_document_images: Optional[int] = 50,
                    shuffle_buffer_size: int = 10_000,
                    cycle_length: int = 4,
                num_epochs: Optional[int] = None) -> records.IndexedFileSource:
  """Interleaved documents from OpenFlamingo-style MMC4 tars (their loader's defaults)."""
  fmt = mmc4.MMC4Tar(assignment, similarity_threshold, min_image_bytes, max_document_images)
  return records.IndexedFileSource(_splits(split_to_filepattern), fmt, shuffle_buffer_size,
                                   cycle_length, name="mmc4_tar", num_epochs=num_epochs)


@_configurable
def tfds_source(builder_name: str, data_dir: Optional[str] = None, image_key: str = "image",
                caption_key: str = "caption",
                splits: Optional[Mapping[str, str]] = None) -> tfds_lib.TfdsImageText:
  """Image-caption pairs from a prepared TFDS dataset (`splits`: our split -> the TFDS one)."""
  return tfds_lib.TfdsImageText(builder_name, data_dir, image_key, caption_key, splits)


@_configurable
def text_source(split_to_filepattern: SplitPatterns, mode: str = "block",
                shuffle_buffer_size: int = 10_000, cycle_length: int = 4,
                num_epochs: Optional[int] = None) -> text_files.TextFileSource:
  """Text documents from .txt / .txt.gz files: one per line (`mode="line"`) or per block."""
  return text_files.TextFileSource(_splits(split_to_filepattern), mode=mode,
                                   shuffle_buffer_size=shuffle_buffer_size,
                                   cycle_length=cycle_length, num_epochs=num_epochs)


@_configurable
def jsonl_text_source(split_to_filepattern: SplitPatterns, field: str = "text",
                      shuffle_buffer_size: int = 10_000, cycle_length: int = 4,
                      num_epochs: Optional[int] = None) -> text_files.TextFileSource:
  """Text documents from JSONL (.jsonl / .jsonl.gz) files, the text in `field`."""
  return text_files.TextFileSource(_splits(split_to_filepattern), jsonl_field=field,
                                   shuffle_buffer_size=shuffle_buffer_size,
                                   cycle_length=cycle_length, num_epochs=num_epochs)
