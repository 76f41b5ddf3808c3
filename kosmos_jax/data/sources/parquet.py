"""Image-caption pairs in img2dataset's parquet output: one row per URL, the image bytes in a
column named by the encode format (`jpg`, `png` or `webp`), plus `caption`, `key`, `status`.
Failed downloads stay as rows with `status` other than "success" and no image; they are skipped
and counted, as are rows with a null image or an empty / non-UTF-8 caption."""
from __future__ import annotations

import collections
import threading
from typing import Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from kosmos_jax.data.sources import records

IMAGE_COLUMNS = ("jpg", "png", "webp", "jpeg", "image")


def _pyarrow_parquet():
  try:
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError("reading parquet needs pyarrow: pip install pyarrow") from None
  return pq


def _parquet_file(path: str):
  """A pyarrow ParquetFile for a local path or a URI pyarrow's filesystems know (gs://, s3://)."""
  pq = _pyarrow_parquet()
  if "://" in path:
    import pyarrow.fs  # pylint: disable=g-import-not-at-top
    filesystem, inner = pyarrow.fs.FileSystem.from_uri(path)
    return pq.ParquetFile(filesystem.open_input_file(inner))
  return pq.ParquetFile(path)


class Img2DatasetParquet(records.RecordFormat):
  """Rows of img2dataset parquet files (row groups are read whole and cached)."""

  reasons = ("status_not_success", "image_missing", "image_too_small", *records.TEXT_REASONS)

  def __init__(self, image_column: Optional[str] = None, caption_column: str = "caption",
               key_column: str = "key", status_column: Optional[str] = "status",
               min_image_bytes: int = 0):
    self.image_column = image_column
    self.caption_column = caption_column
    self.key_column = key_column
    self.status_column = status_column
    self.min_image_bytes = min_image_bytes
    self._lock = threading.Lock()
    self._meta: dict[str, tuple[np.ndarray, tuple[str, ...]]] = {}
    self._groups: collections.OrderedDict = collections.OrderedDict()

  @property
  def features(self) -> Mapping[str, tf.TensorSpec]:
    return {"key": tf.TensorSpec([], tf.string), "image": tf.TensorSpec([], tf.string),
            "text": tf.TensorSpec([], tf.string)}

  def _metadata(self, path: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """(cumulative rows per row group, the columns to read: image column first) of a file."""
    with self._lock:
      if path in self._meta:
        return self._meta[path]
    meta = _parquet_file(path).metadata
    names = set(meta.schema.names)
    rows = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    column = self.image_column or next((c for c in IMAGE_COLUMNS if c in names), None)
    missing = [c for c in (column, self.caption_column, self.key_column) if c not in names]
    if column is None or missing:
      raise ValueError(f"{path}: no column {missing or list(IMAGE_COLUMNS)}; columns are "
                       f"{sorted(names)} (set image_column / caption_column / key_column)")
    columns = [column, self.caption_column, self.key_column]
    if self.status_column in names:
      columns.append(self.status_column)
    result = (np.cumsum([0] + rows), tuple(columns))
    with self._lock:
      self._meta[path] = result
    return result

  def _row_group(self, path: str, group: int, columns: Sequence[str]) -> dict[str, list]:
    cache_key = (path, group)
    with self._lock:
      if cache_key in self._groups:
        self._groups.move_to_end(cache_key)
        return self._groups[cache_key]
    table = _parquet_file(path).read_row_group(group, columns=list(columns))
    data = {name: table.column(name).to_pylist() for name in columns}
    with self._lock:
      self._groups[cache_key] = data
      while len(self._groups) > 8:
        self._groups.popitem(last=False)
    return data

  def num_records(self, path: str) -> int:
    return int(self._metadata(path)[0][-1])

  def read(self, path: str, index: int):
    bounds, columns = self._metadata(path)
    image_column = columns[0]
    group = int(np.searchsorted(bounds, index, side="right") - 1)
    rows = self._row_group(path, group, columns)
    row = index - int(bounds[group])
    key = str(rows[self.key_column][row])
    if self.status_column in rows:
      if rows[self.status_column][row] not in (None, "success"):
        raise records.SkipRecord("status_not_success")
    image = rows[image_column][row]
    if not image:
      raise records.SkipRecord("image_missing")
    if self.min_image_bytes and len(image) <= self.min_image_bytes:
      raise records.SkipRecord("image_too_small")
    text = records.check_text(rows[self.caption_column][row])
    return {"key": key.encode(), "image": bytes(image), "text": text.encode()}, {}
