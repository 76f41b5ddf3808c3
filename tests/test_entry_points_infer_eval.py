"""Inference and evaluation entry points on a real (briefly trained) run: loading a run, a
weights-only checkpoint; the infer CLI (single prompt and jsonl with several images); the eval
entry point (metrics, JSONL, HTML report); prompt building (k-shot, two-stage)."""
import json
import os
import subprocess
import sys
import types

import gin
import jax
import numpy as np
import pytest
from PIL import Image

from kosmos_jax import eval as eval_script
from kosmos_jax.evaluation import tasks as eval_tasks
from kosmos_jax.data import prompts as prompts_lib
from kosmos_jax.evaluation import evaluator
from kosmos_jax.inference import runner as runner_lib
from kosmos_jax import gin_utils
from kosmos_jax.inference import model_loading
from kosmos_jax.checkpointing import params_io
from kosmos_jax.evaluation import shapes as shapes_eval
from kosmos_jax.data import synthetic

OVERRIDES = ["MODEL_OVERRIDES={'text.vocab_size': 128, 'connector.num_latents': 8}",
             "TASK_FEATURE_LENGTHS={'targets': 64, 'images': 4}", "BATCH_SIZE=8",
             "TRAIN_STEPS=3", "EVAL_DATASETS=[]", "trainer.TrainerConfig.log_every=1",
             "trainer.TrainerConfig.checkpoint_every=3"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("run")
  gin.clear_config()
  gin_utils.parse(["experiments/shapes_tiny.gin"], OVERRIDES + [f"MODEL_DIR='{model_dir}'"])
  from kosmos_jax import train as train_script  # pylint: disable=g-import-not-at-top
  result = gin.get_configurable(train_script.train)()
  gin.clear_config()
  return model_dir, jax.device_get(result.state.params)


def test_loads_a_training_run_with_its_vocabulary(run_dir):
  model_dir, params = run_dir
  model, loaded, config, vocab, what = model_loading.load_for_inference(str(model_dir))
  assert "training run" in what and config.num_image_tokens == 8
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(loaded)):
    np.testing.assert_array_equal(a, b)
  assert vocab.encode("a red circle") == synthetic.ShapesVocabulary().encode("a red circle")


def test_weights_only_checkpoint_needs_or_finds_a_vocabulary(run_dir, tmp_path):
  model_dir, params = run_dir
  _, _, config, vocab, _ = model_loading.load_for_inference(str(model_dir))
  params_io.save_params(str(tmp_path / "ckpt"), params, config)
  with pytest.raises(FileNotFoundError, match="--vocab"):
    model_loading.load_for_inference(str(tmp_path / "ckpt"))
  _, loaded, _, _, what = model_loading.load_for_inference(str(tmp_path / "ckpt"), vocab)
  assert "weights-only" in what
  assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(params)


def test_infer_cli_batch_with_several_images(run_dir, tmp_path):
  model_dir, _ = run_dir
  images = synthetic.split_data(synthetic.WorldConfig(), "test").images
  paths = []
  for k in range(2):
    paths.append(str(tmp_path / f"img{k}.png"))
    Image.fromarray(images[k]).resize((64, 48)).save(paths[-1])   # resized + cropped on load
  requests = [{"id": "one", "prompt": "an image of", "images": [paths[0]]},
              {"id": "two", "prompt": "<image> a red circle. <image> an image of",
               "images": paths}]
  (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(r) for r in requests))
  out = subprocess.run(
      [sys.executable, "-m", "kosmos_jax.infer", f"--checkpoint={model_dir}",
       f"--input_jsonl={tmp_path / 'in.jsonl'}", f"--output_jsonl={tmp_path / 'out.jsonl'}",
       "--max_new_tokens=4"], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  lines = [json.loads(l) for l in (tmp_path / "out.jsonl").read_text().splitlines()]
  assert [l["id"] for l in lines] == ["one", "two"]
  assert all(isinstance(l["output"], str) for l in lines)
  bad = subprocess.run(
      [sys.executable, "-m", "kosmos_jax.infer", f"--checkpoint={model_dir}",
       f"--image={paths[0]}", f"--image={paths[1]}", "--prompt=<image> only one marker"],
      capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "1 <image> markers but 2 images" in bad.stderr


def test_eval_entry_point_writes_metrics_and_html(run_dir, tmp_path):
  model_dir, _ = run_dir
  out_dir = tmp_path / "eval"
  done = eval_script.evaluate(
      checkpoint=str(model_dir), output_dir=str(out_dir), num_examples=8, batch_size=8,
      tasks=[("shapes_eval_vqa", "test"), ("shapes_eval_classify", "heldout")])
  (step, metrics), = done.items()
  assert step == 3
  assert 0 <= metrics["shapes_eval_vqa:test"]["vqa_accuracy"] <= 100
  assert 0 <= metrics["shapes_eval_classify:heldout"]["accuracy"] <= 100
  records = [json.loads(l) for l in (out_dir / "metrics.jsonl").read_text().splitlines()]
  assert {r["task"] for r in records} == {"shapes_eval_vqa:test", "shapes_eval_classify:heldout"}
  html = (out_dir / "report_3.html").read_text()
  assert html.count("data:image/png;base64,") >= 16 and "Question:" in html


def test_k_shot_prompt_puts_demonstrations_with_their_images_first():
  image = lambda v: np.full((1, 4, 4, 3), v, np.uint8)
  demos = [evaluator.EvalExample("d1", "<image> colour:", image(1), references=["red"]),
           evaluator.EvalExample("d2", "<image> colour:", image(2), references=["blue"])]
  query = evaluator.EvalExample("q", "<image> colour:", image(3), references=["green"])
  spec = eval_tasks.EvalSpec(mode="generate")
  out = evaluator.with_demonstrations(query, demos, spec)
  assert out.prompt == "<image> colour: red <image> colour: blue <image> colour:"
  assert [int(im[0, 0, 0]) for im in out.images] == [1, 2, 3]
  segments = prompts_lib.split_prompt(out.prompt, out.images)
  assert [s if isinstance(s, str) else "IMG" for s in segments] == [
      "IMG", "colour: red", "IMG", "colour: blue", "IMG", "colour:"]
  with pytest.raises(ValueError, match="2 <image> markers but 3 images"):
    prompts_lib.split_prompt("<image> a <image> b", out.images)


def test_two_stage_prompt_puts_the_rationale_after_the_images(monkeypatch):
  runner = runner_lib.Runner.__new__(runner_lib.Runner)
  runner.vocab = types.SimpleNamespace(eos_id=2, pad_id=1)
  seen = []

  def fake_generate(examples, config, constraint=None, seed=0):
    seen.extend(e.prompt for e in examples)
    return ["a happy face"] * len(examples)
  monkeypatch.setattr(runner, "generate", fake_generate, raising=False)
  spec = eval_tasks.EvalSpec(mode="score", rationale_prompt="Introduce this picture in detail:")
  query = evaluator.EvalExample("q", "<image> Question: what is the sentiment? Answer:",
                                np.zeros((1, 4, 4, 3), np.uint8), ["negative", "positive"],
                                label=1)
  out = evaluator.with_rationales(runner, [query], spec)
  assert seen == ["<image> Introduce this picture in detail:"]
  assert out[0].prompt == "<image> a happy face Question: what is the sentiment? Answer:"


def test_shapes_eval_tasks_are_registered_with_their_specs():
  assert set(shapes_eval.TASKS.values()) <= set(eval_tasks.registered())
  examples = evaluator.load_examples("shapes_eval_classify", "test", limit=3)
  assert all(len(e.candidates) == 24 and 0 <= e.label < 24 for e in examples)
  assert all(e.prompt.startswith("<image>") and e.images.shape == (1, 32, 32, 3) for e in examples)
  vqa = evaluator.load_examples("shapes_eval_vqa", "heldout", limit=2)
  assert all(len(e.references) == 10 for e in vqa)


def test_infer_sees_the_pixels_training_sees(tmp_path):
  """No train/serve skew: one JPEG (odd size, so it is resized and cropped) through the training
  pipeline (task decode + converter) and through infer's request building gives equal pixels."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from kosmos_jax import infer  # pylint: disable=g-import-not-at-top
  from kosmos_jax.data import pipeline, tasks  # pylint: disable=g-import-not-at-top
  yy, xx = np.mgrid[0:61, 0:97]
  photo = np.stack([xx * 2, yy * 4, (xx * yy) % 256], -1).astype(np.uint8)
  path = tmp_path / "photo.jpg"
  Image.fromarray(photo).save(path, quality=90)
  record = tf.train.Example(features=tf.train.Features(feature={
      "jpg": tf.train.Feature(bytes_list=tf.train.BytesList(value=[path.read_bytes()])),
      "txt": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"a photo"]))}))
  with tf.io.TFRecordWriter(str(tmp_path / "photo.tfrecord")) as writer:
    writer.write(record.SerializeToString())
  source = tasks.tfexample_source({"train": str(tmp_path / "photo.tfrecord")},
                                  {"jpg": "bytes", "txt": "bytes"})
  name = tasks.image_text_task("skew_check", source, synthetic.ShapesVocabulary(),
                               image_key="jpg", text_key="txt", image_size=32)
  batch = next(pipeline.make_iterator(name, batch_size=1, length=32, num_image_tokens=4,
                                      image_size=32, max_images=1, shuffle=False))
  served = infer.make_request(0, "an image of", [str(path)], 32)
  assert served.prompt == "<image> an image of"
  np.testing.assert_array_equal(batch["images"][0, 0], served.images[0])


def test_a_batch_with_bad_lines_answers_the_good_ones(run_dir, tmp_path):
  """Good lines (one with image paths relative to the jsonl folder) mixed with malformed JSON, a
  missing, a corrupt and an empty image, a marker/image mismatch: one output line per input line
  in order, errors naming the cause, exit status 3, a summary on stderr. Relative --checkpoint
  and --input_jsonl from another working directory."""
  model_dir, _ = run_dir
  data = tmp_path / "data"
  data.mkdir()
  image = synthetic.split_data(synthetic.WorldConfig(), "test").images[0]
  Image.fromarray(image).save(data / "good.png")
  (data / "corrupt.jpg").write_bytes(np.random.RandomState(0).bytes(500))
  (data / "empty.png").write_bytes(b"")
  lines = [json.dumps({"id": "a", "prompt": "an image of", "images": ["good.png"]}),
           '{"prompt": "an image of", "images": [',
           json.dumps({"id": "missing", "prompt": "an image of", "images": ["nope.png"]}),
           json.dumps({"id": "corrupt", "prompt": "an image of", "images": ["corrupt.jpg"]}),
           json.dumps({"id": "empty", "prompt": "an image of", "images": ["empty.png"]}),
           json.dumps({"id": "mismatch", "prompt": "<image> <image> two",
                       "images": [str(data / "good.png")]}),
           "",
           json.dumps({"id": "b", "prompt": "<image> a red", "images": [str(data / "good.png")]})]
  (data / "in.jsonl").write_text("\n".join(lines) + "\n")
  work = tmp_path / "elsewhere"
  work.mkdir()
  out = subprocess.run(
      [sys.executable, "-m", "kosmos_jax.infer",
       f"--checkpoint={os.path.relpath(model_dir, work)}", "--input_jsonl=../data/in.jsonl",
       "--output_jsonl=out.jsonl", "--max_new_tokens=3"],
      capture_output=True, text=True, timeout=300, cwd=work)
  assert out.returncode == 3, out.stderr[-2000:]
  assert "served 2 of 7 lines (5 failed)" in out.stderr
  results = [json.loads(l) for l in (work / "out.jsonl").read_text().splitlines()]
  assert [r.get("id") for r in results] == ["a", "2", "missing", "corrupt", "empty", "mismatch",
                                            "b"]
  assert isinstance(results[0]["output"], str) and isinstance(results[6]["output"], str)
  assert "not valid JSON" in results[1]["error"] and results[1]["line"] == 2
  assert "nope.png" in results[2]["error"] and "not found" in results[2]["error"]
  assert "corrupt.jpg" in results[3]["error"] and "cannot be decoded" in results[3]["error"]
  assert "empty.png" in results[4]["error"] and "empty file" in results[4]["error"]
  assert "2 <image> markers but 1 images" in results[5]["error"]
  single = subprocess.run(
      [sys.executable, "-m", "kosmos_jax.infer", f"--checkpoint={model_dir}",
       f"--image={data / 'corrupt.jpg'}"], capture_output=True, text=True, timeout=300)
  assert single.returncode == 2 and "Traceback" not in single.stderr
  errors = [l for l in single.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1 and "corrupt.jpg" in errors[0], single.stderr[-2000:]
