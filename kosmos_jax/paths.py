"""Paths: where the project's own files live, and how a path a user gives is read."""
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
