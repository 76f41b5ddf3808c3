"""Reads and writes Hugging Face weight files as numpy arrays, without torch.

A Hugging Face model directory holds its weights as one of:
  model.safetensors                       a single safetensors file
  model.safetensors.index.json + shards   a sharded safetensors checkpoint
  pytorch_model.bin[.index.json + shards] pickled torch checkpoints (legacy)

Safetensors files are read with `safetensors` in numpy mode, tensor by tensor (bfloat16 arrives as
`ml_dtypes.bfloat16`).
Pickled checkpoints can run arbitrary code when unpickled, so they are refused unless the caller
passes `allow_pickle=True` (`--allow_pickle` on the command line); even then they are read with
`torch.load(weights_only=True)`, which only rebuilds tensors. That is the only torch use in the
package, and torch is imported lazily inside it.
"""
from __future__ import annotations

import json
import os
from typing import Iterator, Mapping, Optional

import ml_dtypes
import numpy as np
from safetensors import numpy as safetensors_numpy
from safetensors import safe_open

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PICKLE_SINGLE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
# transformers refuses safetensors files without this metadata entry.
HF_METADATA = {"format": "pt"}
DEFAULT_MAX_SHARD_BYTES = 4 << 30


def _shards_from_index(directory: str, index_name: str) -> list[str]:
  """The shard files named by a `*.index.json` weight map, checked to exist."""
  with open(os.path.join(directory, index_name)) as f:
    index = json.load(f)
  if "weight_map" not in index:
    raise ValueError(f"{os.path.join(directory, index_name)} has no 'weight_map'; it is not a "
                     "Hugging Face sharded-checkpoint index.")
  shards = sorted(set(index["weight_map"].values()))
  missing = [s for s in shards if not os.path.exists(os.path.join(directory, s))]
  if missing:
    raise FileNotFoundError(f"{index_name} in {directory} names shard files that are not there: "
                            f"{missing}. Download the complete checkpoint.")
  return [os.path.join(directory, s) for s in shards]


def find_weight_files(directory: str, allow_pickle: bool = False) -> tuple[str, list[str]]:
  """Returns ("safetensors" | "pickle", [files]) for the weights in a HF model directory.

  Safetensors wins when both formats are present. Raises FileNotFoundError when there are no
  weights, and ValueError for a pickled checkpoint without `allow_pickle`.
  """
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{directory!r} is not a directory; pass the Hugging Face model "
                            "directory (the one holding config.json and the weights).")
  if os.path.exists(os.path.join(directory, SAFE_SINGLE)):
    return "safetensors", [os.path.join(directory, SAFE_SINGLE)]
  if os.path.exists(os.path.join(directory, SAFE_INDEX)):
    return "safetensors", _shards_from_index(directory, SAFE_INDEX)
  pickled = []
  if os.path.exists(os.path.join(directory, PICKLE_SINGLE)):
    pickled = [os.path.join(directory, PICKLE_SINGLE)]
  elif os.path.exists(os.path.join(directory, PICKLE_INDEX)):
    pickled = _shards_from_index(directory, PICKLE_INDEX)
  if pickled:
    if not allow_pickle:
      raise ValueError(
          f"{directory} holds only pickled PyTorch weights ({os.path.basename(pickled[0])}). "
          "Unpickling can execute arbitrary code, so it is refused by default. If you trust this "
          "checkpoint, pass --allow_pickle (allow_pickle=True in Python); it is then read with "
          "torch.load(weights_only=True). Better: convert it to safetensors once.")
    return "pickle", pickled
  present = sorted(os.listdir(directory))
  raise FileNotFoundError(
      f"No weights in {directory}: expected {SAFE_SINGLE}, {SAFE_INDEX} (sharded) or, with "
      f"--allow_pickle, {PICKLE_SINGLE}. The directory holds: {present}")


def _torch_to_numpy(tensor) -> np.ndarray:
  """A CPU torch tensor as numpy, keeping bfloat16 bits exact (numpy has no native bfloat16)."""
  import torch  # pylint: disable=g-import-not-at-top
  tensor = tensor.detach().cpu().contiguous()
  if tensor.dtype == torch.bfloat16:
    return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return tensor.numpy()


def _read_pickle(path: str) -> dict[str, np.ndarray]:
  """Loads a pickled torch state_dict with `weights_only=True` (tensors and containers only)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"Reading {path} needs PyTorch, which is not installed. Install torch, or "
                      "convert the checkpoint to safetensors elsewhere.") from e
  state = torch.load(path, map_location="cpu", weights_only=True)
  if not isinstance(state, Mapping):
    raise ValueError(f"{path} does not hold a state_dict (a mapping of names to tensors).")
  return {name: _torch_to_numpy(t) for name, t in state.items()}


class LazyStateDict(Mapping[str, np.ndarray]):
  """{name: numpy array} over safetensors files; a tensor is read from disk when accessed.

  Converting a 1.6B-parameter checkpoint then holds each source tensor only while it is being
  converted, instead of the whole state_dict next to the converted params.
  """

  def __init__(self, files: list[str]):
    self._file_of: dict[str, str] = {}
    for path in files:
      with safe_open(path, framework="numpy") as f:
        names = list(f.keys())
      repeated = sorted(set(names) & set(self._file_of))
      if repeated:
        raise ValueError(f"Tensors {repeated[:10]} appear in more than one shard "
                         f"({os.path.dirname(path)}); the checkpoint is corrupt.")
      self._file_of.update(dict.fromkeys(names, path))

  def __getitem__(self, name: str) -> np.ndarray:
    with safe_open(self._file_of[name], framework="numpy") as f:
      return f.get_tensor(name)

  def __iter__(self) -> Iterator[str]:
    return iter(self._file_of)

  def __len__(self) -> int:
    return len(self._file_of)


def read_state_dict(directory: str, allow_pickle: bool = False) -> Mapping[str, np.ndarray]:
  """The tensors of a HF model directory as {state_dict name: numpy array}.

  Safetensors are read lazily (`LazyStateDict`); pickled checkpoints are loaded whole.
  """
  kind, files = find_weight_files(directory, allow_pickle)
  if kind == "safetensors":
    return LazyStateDict(files)
  tensors: dict[str, np.ndarray] = {}
  for path in files:
    part = _read_pickle(path)
    repeated = sorted(set(part) & set(tensors))
    if repeated:
      raise ValueError(f"Tensors {repeated[:10]} appear in more than one shard of {directory}; "
                       "the checkpoint is corrupt.")
    tensors.update(part)
  return tensors


def write_state_dict(directory: str, tensors: Mapping[str, np.ndarray],
                     max_shard_bytes: Optional[int] = DEFAULT_MAX_SHARD_BYTES) -> list[str]:
  """Writes tensors as HF safetensors: one `model.safetensors`, or shards plus an index.

  Shards are filled in name order up to `max_shard_bytes` (a single larger tensor gets a shard of
  its own); None means never shard. Returns the written file names.
  """
  os.makedirs(directory, exist_ok=True)
  names = sorted(tensors)
  arrays = {n: np.ascontiguousarray(tensors[n]) for n in names}
  total = sum(a.nbytes for a in arrays.values())
  if max_shard_bytes is None or total <= max_shard_bytes:
    safetensors_numpy.save_file(arrays, os.path.join(directory, SAFE_SINGLE), metadata=HF_METADATA)
    return [SAFE_SINGLE]
  groups: list[list[str]] = [[]]
  size = 0
  for name in names:
    nbytes = arrays[name].nbytes
    if groups[-1] and size + nbytes > max_shard_bytes:
      groups.append([])
      size = 0
    groups[-1].append(name)
    size += nbytes
  files, weight_map = [], {}
  for i, group in enumerate(groups):
    filename = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
    safetensors_numpy.save_file({n: arrays[n] for n in group}, os.path.join(directory, filename),
                                metadata=HF_METADATA)
    files.append(filename)
    weight_map.update({n: filename for n in group})
  with open(os.path.join(directory, SAFE_INDEX), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
  return files + [SAFE_INDEX]


def remove_weight_files(directory: str) -> list[str]:
  """Deletes HF weight files (single, sharded, index) from `directory`; returns their names.

  Called before writing new weights so that transformers cannot pick up a stale file (it
  prefers model.safetensors over an index).
  """
  if not os.path.isdir(directory):
    return []
  names = [n for n in os.listdir(directory)
           if n in (SAFE_SINGLE, SAFE_INDEX) or (n.startswith("model-") and
                                                 n.endswith(".safetensors"))]
  for name in names:
    os.remove(os.path.join(directory, name))
  return names


def read_json(directory: str, filename: str = "config.json", required: bool = True) -> dict:
  """A JSON file of a model directory; {} for a missing optional file."""
  if required and not os.path.isdir(directory):
    raise FileNotFoundError(f"{directory!r} is not a directory; pass the Hugging Face model "
                            "directory (the one holding config.json and the weights).")
  path = os.path.join(directory, filename)
  if not os.path.exists(path):
    if required:
      raise FileNotFoundError(f"{path} is missing; a Hugging Face model directory needs its "
                              f"{filename} (save it with `save_pretrained`).")
    return {}
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} is not valid JSON: {e}") from e
