"""Each shipped gin/data/*.gin registers a working task on files in its layout: parse it with
the paths filled in, build the task's dataset and read examples (tokenized, images decoded)."""
import gzip
import json
import os

import gin
import numpy as np
import pytest
import seqio

from kosmos_jax import gin_utils
from kosmos_jax.data import synthetic
from tests.data import layouts

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "img2dataset")


def _files(tmp_path, name):
  """name -> (gin file, bindings of its path macros, the task macro it sets)."""
  cat = layouts.encode(layouts.photo("chelsea.png").convert("RGB"), "JPEG", quality=95)
  if name == "img2dataset_webdataset":
    return [f"WEBDATASET_FILES='{FIXTURE}/webdataset/*.tar'"], "CAPTION_TASK"
  if name == "img2dataset_parquet":
    return [f"PARQUET_FILES='{FIXTURE}/parquet/*.parquet'"], "CAPTION_TASK"
  if name == "mmc4":
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "cat.jpg").write_bytes(cat)
    docs = [layouts.mmc4_document(f"http://x/{i}", ["a cat", "on a mat", "asleep"],
                                  [("cat.jpg", 0, 0.3), ("cat.jpg", 2, 0.3)]) for i in range(4)]
    layouts.write_jsonl(str(tmp_path / "docs_shard_0_v2.jsonl.zip"), docs, "zip")
    return [f"MMC4_FILES='{tmp_path}/*.jsonl.zip'", f"MMC4_IMAGE_DIR='{tmp_path}/images'"], \
        "INTERLEAVED_TASK"
  if name == "mmc4_tar":
    doc = layouts.mmc4_document("http://x/doc", ["a cat", "on a mat"],
                                [("i0", 0, 0.9), ("i1", 1, 0.8)],
                                np.array([[0.9, 0.1], [0.1, 0.8]]))
    layouts.write_webdataset(str(tmp_path / "00000.tar"),
                             [layouts.openflamingo_sample(doc, {"i0": cat, "i1": cat})])
    return [f"MMC4_TAR_FILES='{tmp_path}/*.tar'"], "INTERLEAVED_TASK"
  if name == "text":
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(b"a red circle\n\na blue square\n"))
    return [f"TEXT_FILES='{tmp_path}/*.txt.gz'"], "TEXT_TASK"
  if name == "jsonl_text":
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "a green triangle"}) + "\n")
    return [f"JSONL_FILES='{tmp_path}/*.jsonl'"], "TEXT_TASK"
  raise AssertionError(name)


@pytest.mark.parametrize("name", ["img2dataset_webdataset", "img2dataset_parquet", "mmc4",
                                  "mmc4_tar", "text", "jsonl_text"])
def test_data_gin_file_registers_a_working_task(tmp_path, name):
  bindings, macro = _files(tmp_path, name)
  bindings.append(f"SPM_MODEL='{synthetic.shapes_vocabulary_file()}'")
  gin.clear_config()
  try:
    gin_utils.parse([f"data/{name}.gin"], bindings, finalize=False)
    task_name = gin.query_parameter(f"{macro}/macro.value")
    task_name = task_name.scoped_configurable_fn() if hasattr(task_name, "scoped_configurable_fn") \
        else task_name
  finally:
    gin.clear_config()
  task = seqio.get_mixture_or_task(task_name)
  examples = list(task.get_dataset(sequence_length=None, split="train", shuffle=False,
                                   num_epochs=1).take(3).as_numpy_iterator())
  assert examples and all(len(ex["targets"]) > 1 for ex in examples)
  if macro != "TEXT_TASK":
    assert all(ex["images"].shape[1:] == (224, 224, 3) and len(ex["images"]) >= 1
               for ex in examples)
