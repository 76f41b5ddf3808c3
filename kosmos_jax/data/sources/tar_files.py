"""WebDataset tar shards as random-access records: an index of the members of each sample.

WebDataset groups consecutive tar members that share a key: the member path up to the first dot
of its file name (`a/b/000123.jpg` and `a/b/000123.json` are sample `a/b/000123` with parts
`jpg` and `json`; extensions are lower-cased, `__meta__`-style names and directories skipped).
Indexing reads only the 512-byte member headers; a part is then read with one seek.
"""
from __future__ import annotations

import collections
import dataclasses
import re
import tarfile
import threading
from typing import Optional

from kosmos_jax.data.sources import records

_KEY_AND_EXT = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")
_META = re.compile(r"__[^/]*__($|/)")
_OPEN_FILES = 8          # per thread


@dataclasses.dataclass(frozen=True)
class TarSample:
  key: str
  parts: dict[str, tuple[int, int]]     # extension -> (data offset, size) in the tar


def split_member_name(name: str) -> Optional[tuple[str, str]]:
  """(key, extension) of a tar member as WebDataset splits it, or None if it is no sample part."""
  if _META.search(name):
    return None
  match = _KEY_AND_EXT.match(name)
  if not match:
    return None
  return match.group(1), match.group(2).lower()


def index_tar(path: str) -> tuple[list[TarSample], bool]:
  """(the samples of a tar file in file order, whether it is damaged). A truncated or corrupt
  tar keeps the complete samples before the damage (the last, maybe partial, one is dropped)."""
  samples: list[TarSample] = []
  with records.open_file(path) as f:
    try:
      with tarfile.open(fileobj=f, mode="r:") as tar:
        for member in tar:
          if not member.isreg():
            continue
          split = split_member_name(member.name)
          if split is None:
            continue
          key, ext = split
          if not samples or samples[-1].key != key:
            samples.append(TarSample(key, {}))
          samples[-1].parts.setdefault(ext, (member.offset_data, member.size))
    except (tarfile.TarError, EOFError, OSError) as e:
      records.warn_once("a damaged tar file", f"{path}: {e}; its complete samples are kept")
      return samples[:-1], True
  return samples, False


class TarIndex:
  """Cached sample indexes and open file handles (thread-safe: handles are per thread)."""

  def __init__(self, max_cached: int = 64):
    self._indexes: collections.OrderedDict[str, list[TarSample]] = collections.OrderedDict()
    self._lock = threading.Lock()
    self._local = threading.local()
    self._max_cached = max_cached

  def samples(self, path: str) -> list[TarSample]:
    with self._lock:
      if path in self._indexes:
        self._indexes.move_to_end(path)
        return self._indexes[path]
    samples, damaged = index_tar(path)
    if damaged:
      records.count_damaged_file()
    with self._lock:
      self._indexes[path] = samples
      while len(self._indexes) > self._max_cached:
        self._indexes.popitem(last=False)
    return samples

  def read_part(self, path: str, location: tuple[int, int]) -> bytes:
    files = getattr(self._local, "files", None)
    if files is None:
      files = self._local.files = collections.OrderedDict()
    handle = files.get(path)
    if handle is None:
      handle = files[path] = records.open_file(path)
      while len(files) > _OPEN_FILES:
        files.popitem(last=False)[1].close()
    offset, size = location
    handle.seek(offset)
    data = handle.read(size)
    if len(data) != size:
      raise OSError(f"{path}: member at byte {offset} is truncated ({len(data)} of {size} bytes)")
    return data
