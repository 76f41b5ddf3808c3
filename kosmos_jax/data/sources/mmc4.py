"""Interleaved image-text documents in the MMC4 layouts.

- `MMC4Jsonl`: the release format, jsonl (or `.jsonl.zip` / `.jsonl.gz`) documents with
  `text_list`, `url`, `image_info[]` (`image_name`, `raw_url`, `matched_text_index`,
  `matched_sim`, `face_detections`), `similarity_matrix`, `could_have_url_duplicate`; image
  bytes come from `image_dir/image_name`.
- `MMC4Tar`: OpenFlamingo-style WebDataset tars, one `.json` document per sample with the image
  bytes base64-encoded in `image_info[i]["image_base64"]`.

Both yield `texts` string [m], `images` encoded string [n] and `image_text_index` int32 [n]
(image j goes right before texts[index[j]], sorted), `key` = the document `url`. How images
are placed (docs/data.md §3): `assignment="matched"` keeps MMC4's `matched_text_index`;
`"hungarian"` assigns images to sentences one-to-one by the similarity matrix (OpenFlamingo's
loader). Images under `min_image_bytes` or matched below `similarity_threshold` are dropped from
their document and counted; documents with more than `max_document_images` images are skipped.
"""
from __future__ import annotations

import abc
import base64
import binascii
import collections
import gzip
import io
import os
import threading
import zipfile
from typing import Any, Mapping, Optional

import numpy as np
import tensorflow as tf

from kosmos_jax.data.sources import records
from kosmos_jax.data.sources.tar_files import TarIndex
from kosmos_jax.data.sources.webdataset import parse_json

ASSIGNMENTS = ("matched", "hungarian")
_DOC_REASONS = ("json_malformed", "document_malformed", "matched_index_out_of_range",
                "too_many_images", "no_texts")
_IMAGE_TALLIES = ("image_missing", "image_too_small", "image_below_similarity")


class JsonLines:
  """Random access to the lines of .jsonl / .jsonl.gz / .jsonl.zip files (compressed files are
  held decompressed in memory while in use, a few at a time)."""

  def __init__(self, max_cached: int = 4):
    self._lock = threading.Lock()
    self._files: collections.OrderedDict[str, tuple[Optional[bytes], np.ndarray]] = (
        collections.OrderedDict())
    self._max_cached = max_cached

  @staticmethod
  def _load(path: str) -> bytes:
    with records.open_file(path) as f:
      data = f.read()
    if path.endswith(".gz"):
      return gzip.decompress(data)
    if path.endswith(".zip"):
      with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = [n for n in archive.namelist() if not n.endswith("/")]
        return b"".join(archive.read(n) for n in names)
    return data

  def _entry(self, path: str) -> tuple[Optional[bytes], np.ndarray]:
    with self._lock:
      if path in self._files:
        self._files.move_to_end(path)
        return self._files[path]
    data = self._load(path)
    ends = np.flatnonzero(np.frombuffer(data, np.uint8) == ord("\n")) + 1
    if not len(ends) or ends[-1] != len(data):
      ends = np.append(ends, len(data))
    starts = np.concatenate([[0], ends[:-1]])
    keep = (ends - starts) > 1 if len(data) else np.zeros([0], bool)   # skip blank lines
    spans = np.stack([starts[keep], ends[keep]], axis=1)
    compressed = path.endswith((".gz", ".zip"))
    entry = (data if compressed else None, spans)
    with self._lock:
      self._files[path] = entry
      while len(self._files) > self._max_cached:
        self._files.popitem(last=False)
    return entry

  def count(self, path: str) -> int:
    return len(self._entry(path)[1])

  def line(self, path: str, index: int) -> bytes:
    data, spans = self._entry(path)
    start, end = (int(x) for x in spans[index])
    if data is not None:
      return data[start:end]
    with records.open_file(path) as f:
      f.seek(start)
      return f.read(end - start)


def hungarian_assignment(similarity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """One sentence per image (and vice versa) maximising total similarity: (image rows, their
  sentence). `similarity` is [num_images, num_texts]."""
  from scipy.optimize import linear_sum_assignment  # pylint: disable=g-import-not-at-top
  return linear_sum_assignment(-similarity)


class _MMC4Documents(records.RecordFormat):
  """What both layouts share: turning one document into texts, images and their places."""

  reasons = _DOC_REASONS
  tallies = _IMAGE_TALLIES

  def __init__(self, assignment: str, similarity_threshold: Optional[float],
               min_image_bytes: int, max_document_images: Optional[int]):
    if assignment not in ASSIGNMENTS:
      raise ValueError(f"mmc4: assignment={assignment!r}; choose one of {ASSIGNMENTS}")
    self.assignment = assignment
    self.similarity_threshold = similarity_threshold
    self.min_image_bytes = min_image_bytes
    self.max_document_images = max_document_images

  @property
  def features(self) -> Mapping[str, tf.TensorSpec]:
    return {"key": tf.TensorSpec([], tf.string), "texts": tf.TensorSpec([None], tf.string),
            "images": tf.TensorSpec([None], tf.string),
            "image_text_index": tf.TensorSpec([None], tf.int32)}

  @abc.abstractmethod
  def image_bytes(self, info: Mapping[str, Any]) -> Optional[bytes]:
    """The encoded bytes of one `image_info` entry (a file or inline base64); None if absent."""

  def _placements(self, doc: Mapping[str, Any], infos: list, num_texts: int):
    """[(image info, text index, similarity)] per the assignment; SkipRecord if out of range."""
    if self.assignment == "hungarian":
      matrix = np.asarray(doc.get("similarity_matrix") or [], np.float64)
      if matrix.shape != (len(infos), num_texts):
        raise records.SkipRecord("document_malformed")
      rows, cols = hungarian_assignment(matrix)
      return [(infos[r], int(c), float(matrix[r, c])) for r, c in zip(rows, cols)]
    placed = []
    for info in infos:
      index = info.get("matched_text_index")
      if isinstance(index, bool) or not isinstance(index, int):
        raise records.SkipRecord("document_malformed")
      if not 0 <= index < num_texts:
        raise records.SkipRecord("matched_index_out_of_range")
      placed.append((info, index, float(info.get("matched_sim", 1.0) or 0.0)))
    return placed

  def document(self, doc: Any):
    """Parsed JSON document -> (features, tallies)."""
    if not isinstance(doc, dict):
      raise records.SkipRecord("document_malformed")
    texts, infos = doc.get("text_list"), doc.get("image_info", [])
    if not isinstance(texts, list) or not isinstance(infos, list) or not all(
        isinstance(t, str) for t in texts) or not all(isinstance(i, dict) for i in infos):
      raise records.SkipRecord("document_malformed")
    if not any(t.strip() for t in texts):
      raise records.SkipRecord("no_texts")
    if self.max_document_images is not None and len(infos) > self.max_document_images:
      raise records.SkipRecord("too_many_images")
    tallies = collections.Counter()
    kept = []
    for info, index, similarity in self._placements(doc, infos, len(texts)):
      if self.similarity_threshold is not None and similarity < self.similarity_threshold:
        tallies["image_below_similarity"] += 1
        continue
      data = self.image_bytes(info)
      if not data:
        tallies["image_missing"] += 1
      elif self.min_image_bytes and len(data) <= self.min_image_bytes:
        tallies["image_too_small"] += 1
      else:
        kept.append((index, data))
    kept.sort(key=lambda item: item[0])   # stable: images of one sentence keep their order
    key = str(doc.get("url") or doc.get("key") or "")
    features = {"key": key.encode(), "texts": [t.encode() for t in texts],
                "images": [data for _, data in kept],
                "image_text_index": np.asarray([i for i, _ in kept], np.int32)}
    return features, tallies


class MMC4Jsonl(_MMC4Documents):
  """MMC4 release files; images read from `image_dir` by `image_name`."""

  def __init__(self, image_dir: str, assignment: str = "matched",
               similarity_threshold: Optional[float] = None, min_image_bytes: int = 0,
               max_document_images: Optional[int] = 50):
    super().__init__(assignment, similarity_threshold, min_image_bytes, max_document_images)
    self.image_dir = image_dir
    self.lines = JsonLines()

  def num_records(self, path: str) -> int:
    return self.lines.count(path)

  def image_bytes(self, info: Mapping[str, Any]) -> Optional[bytes]:
    name = info.get("image_name")
    if not isinstance(name, str) or not name:
      return None
    path = os.path.join(self.image_dir, name)
    try:
      with records.open_file(path) as f:
        return f.read()
    except (OSError, tf.errors.NotFoundError):
      return None

  def read(self, path: str, index: int):
    return self.document(parse_json(self.lines.line(path, index), "line"))


class MMC4Tar(_MMC4Documents):
  """OpenFlamingo-style tars: one `.json` document per sample, images in base64. Defaults follow
  OpenFlamingo's loader: Hungarian assignment, similarity >= 0.24, images over 10 KB."""

  def __init__(self, assignment: str = "hungarian", similarity_threshold: Optional[float] = 0.24,
               min_image_bytes: int = 10 * 1024, max_document_images: Optional[int] = 50,
               json_extension: str = "json"):
    super().__init__(assignment, similarity_threshold, min_image_bytes, max_document_images)
    self.json_extension = json_extension
    self.tars = TarIndex()

  def num_records(self, path: str) -> int:
    return len(self.tars.samples(path))

  def image_bytes(self, info: Mapping[str, Any]) -> Optional[bytes]:
    encoded = info.get("image_base64")
    if not isinstance(encoded, str) or not encoded:
      return None
    try:
      return base64.b64decode(encoded, validate=False)
    except (binascii.Error, ValueError):
      return None

  def read(self, path: str, index: int):
    sample = self.tars.samples(path)[index]
    if self.json_extension not in sample.parts:
      raise records.SkipRecord("document_malformed")
    doc = parse_json(self.tars.read_part(path, sample.parts[self.json_extension]), "json")
    features, tallies = self.document(doc)
    if not features["key"]:
      features["key"] = sample.key.encode()
    return features, tallies
