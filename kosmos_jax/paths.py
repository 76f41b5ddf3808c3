"""Paths: where the project's own files live, how a path a user gives is read, and writing a
small file whole."""
import os

GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin")


def is_remote(path: str) -> bool:
  """gs://, s3://, hdfs://, ... paths are used as given."""
  return "://" in path


def resolve(path: str, base: str = "") -> str:
  """A user path as an absolute local path: `~` expanded, relative to `base` (default: the
  working directory); remote URIs and None pass through untouched."""
  if not path or is_remote(path):
    return path
  path = os.path.expanduser(path)
  if base and not os.path.isabs(path):
    path = os.path.join(base, path)
  return os.path.abspath(path)


def write_text_whole(path: str, text: str) -> None:
  """Writes `text` to a temp file beside `path`, then renames it over `path`: a reader (another
  process of the run, an eval watcher) sees the old file or the new one, never half of one."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)
