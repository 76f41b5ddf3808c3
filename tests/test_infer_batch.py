"""`kosmos_jax.infer` batch serving: a bad jsonl line (bad JSON, missing/corrupt/empty image,
marker mismatch) gets an error record and the others are still answered in order; relative
paths; exit status 0 / 3 / 2; a corrupt --image is one error line, no traceback."""
import json
import os
import subprocess
import sys

import gin
import numpy as np
import pytest
from PIL import Image

from kosmos_jax import gin_utils
from kosmos_jax import infer
from kosmos_jax.data import synthetic

OVERRIDES = ["MODEL_OVERRIDES={'text.vocab_size': 128, 'connector.num_latents': 8}",
             "TASK_FEATURE_LENGTHS={'targets': 64, 'images': 4}", "BATCH_SIZE=8",
             "TRAIN_STEPS=3", "EVAL_DATASETS=[]", "trainer.TrainerConfig.log_every=1",
             "trainer.TrainerConfig.checkpoint_every=3"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("run")
  gin.clear_config()
  gin_utils.parse(["experiments/shapes_tiny.gin"], OVERRIDES + [f"MODEL_DIR='{model_dir}'"])
  from kosmos_jax import train as train_script  # pylint: disable=g-import-not-at-top
  gin.get_configurable(train_script.train)()
  gin.clear_config()
  return model_dir


def _write_images(folder):
  """a.png, b.png (real), corrupt.png (random bytes), empty.png (0 bytes) in `folder`."""
  folder.mkdir(parents=True, exist_ok=True)
  images = synthetic.split_data(synthetic.WorldConfig(), "test").images
  for k, name in enumerate(["a.png", "b.png"]):
    Image.fromarray(images[k]).resize((40, 30)).save(folder / name)
  (folder / "corrupt.png").write_bytes(b"not an image" + np.random.default_rng(0).bytes(256))
  (folder / "empty.png").write_bytes(b"")


def _infer(cwd, *args):
  env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
  return subprocess.run([sys.executable, "-m", "kosmos_jax.infer", *args, "--max_new_tokens=3"],
                        cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_serve_lines_keeps_order_and_groups_by_max_new_tokens(tmp_path):
  _write_images(tmp_path / "imgs")
  lines = list(enumerate([
      json.dumps({"id": "one", "prompt": "first", "images": ["imgs/a.png"]}),
      '{"prompt": "cut',
      json.dumps({"prompt": "second", "max_new_tokens": 2}),
      json.dumps({"prompt": "third", "images": "imgs/a.png"}),
      json.dumps({"id": "x", "prompt": "", "images": []}),
      json.dumps({"prompt": "fourth", "max_new_tokens": 0}),
      json.dumps({"prompt": "<image> fifth", "images": [str(tmp_path / "imgs" / "b.png")]})], 1))
  calls = []

  def generate(examples, max_new):
    calls.append((max_new, [e.id for e in examples]))
    return [f" {e.prompt}|{max_new} " for e in examples]

  records = infer.serve_lines(lines, str(tmp_path), 16, generate, 5)
  assert calls == [(5, ["one", "7"]), (2, ["3"])]   # line 7 has no id: its line number
  assert records[0] == {"id": "one", "prompt": "first", "images": ["imgs/a.png"],
                        "output": "<image> first|5"}
  assert records[2]["output"] == "second|2" and records[6]["output"] == "<image> fifth|5"
  assert records[1] == {"id": "2", "line": 2, "error": records[1]["error"]}
  assert "not valid JSON" in records[1]["error"]
  assert '"images" must be a list' in records[3]["error"]
  assert records[4]["id"] == "x" and '"prompt" is empty' in records[4]["error"]
  assert '"max_new_tokens" must be a positive integer' in records[5]["error"]


def test_batch_with_bad_lines_serves_the_rest_and_exits_3(run_dir, tmp_path):
  data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
  _write_images(data / "imgs")
  elsewhere.mkdir()
  lines = [
      json.dumps({"id": "good", "prompt": "an image of", "images": ["imgs/a.png"]}),
      "",
      '{"prompt": "an image of", "images": [',
      json.dumps({"id": "missing", "prompt": "an image of", "images": ["imgs/nope.png"]}),
      json.dumps({"prompt": "an image of", "images": ["imgs/corrupt.png"]}),
      json.dumps({"prompt": "an image of", "images": ["imgs/empty.png"]}),
      json.dumps({"prompt": "<image> a <image> b", "images": ["imgs/a.png"]}),
      json.dumps({"id": "two", "prompt": "<image> a red circle. <image> an image of",
                  "images": [str(data / "imgs" / "a.png"), "imgs/b.png"], "max_new_tokens": 2}),
      json.dumps([1, 2])]
  (data / "in.jsonl").write_text("\n".join(lines) + "\n")
  out = _infer(elsewhere, f"--checkpoint={os.path.relpath(run_dir, elsewhere)}",
               "--input_jsonl=../data/in.jsonl", "--output_jsonl=out.jsonl")
  assert out.returncode == 3, out.stderr[-3000:]
  assert "served 2 of 8 lines (6 failed)" in out.stderr and "Traceback" not in out.stderr
  records = [json.loads(l) for l in (elsewhere / "out.jsonl").read_text().splitlines()]
  assert [r.get("id") for r in records] == ["good", "3", "missing", "5", "6", "7", "two", "9"]
  assert [r.get("line") for r in records] == [None, 3, 4, 5, 6, 7, None, 9]
  for k in (0, 6):
    assert isinstance(records[k]["output"], str) and "error" not in records[k]
  assert records[6]["max_new_tokens"] == 2 and records[6]["images"][1] == "imgs/b.png"
  errors = [r.get("error", "") for r in records]
  assert "not valid JSON" in errors[1]
  assert "nope.png" in errors[2] and "not found" in errors[2]
  assert "corrupt.png" in errors[3] and "cannot be decoded" in errors[3]
  assert "empty.png" in errors[4] and "empty file" in errors[4]
  assert "2 <image> markers but 1 images" in errors[5]
  assert "expected a JSON object" in errors[7]
  assert all("\n" not in e for e in errors)


def test_all_good_batch_exits_0_and_corrupt_image_prompt_exits_2(run_dir, tmp_path):
  _write_images(tmp_path / "imgs")
  requests = [{"prompt": "an image of", "images": ["imgs/a.png"]},
              {"id": "text only", "prompt": "a red circle"}]
  (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(r) for r in requests))
  good = _infer(tmp_path, f"--checkpoint={run_dir}", "--input_jsonl=in.jsonl")
  assert good.returncode == 0, good.stderr[-3000:]
  assert "served 2 of 2 lines (0 failed)" in good.stderr
  records = [json.loads(l) for l in good.stdout.splitlines()]
  assert [r.get("id") for r in records] == [None, "text only"]
  assert all(isinstance(r["output"], str) for r in records)

  bad = _infer(tmp_path, f"--checkpoint={run_dir}", "--image=imgs/corrupt.png",
               "--prompt=an image of")
  assert bad.returncode == 2, bad.stderr[-3000:]
  errors = [l for l in bad.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "corrupt.png" in errors[0], bad.stderr[-3000:]
  assert "Traceback" not in bad.stderr
