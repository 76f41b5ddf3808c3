"""Data pipeline throughput per host for every real-data layout, at the paper's shapes.

  python -m benchmarks.data_pipeline [--examples=400] [--batches=12] [--data_out=benchmarks/results]

Writes corpora in each layout (real photos from scikit-image re-encoded as ~256 px JPEGs, as
img2dataset stores them; generated captions, documents and text), then measures the training
pipeline (read, decode, resize to 224, tokenize, pack 2048-token rows with 64 tokens per image,
batch) for each: examples/s, tokens/s (non-pad), packing efficiency; the paper's mixture
(0.5 : 0.5 : 0.2 text : caption : interleaved tokens); and the ratio to what the demo model's
train step consumes. From the measured tokens/s per core it derives how many host cores a
v5p host (4 chips) needs to feed the 1.6 B model at a given MFU. Needs the test extras
(webdataset, scikit-image): `pip install -e .[test]`.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any, Callable

from absl import app
from absl import flags
import numpy as np

from benchmarks import train_step   # the demo model's train step, timed the same way
from kosmos_jax.data import pipeline
from kosmos_jax.data import sources
from kosmos_jax.data import tasks
from kosmos_jax.data import vocab as vocab_lib
from kosmos_jax.models import config as config_lib
from kosmos_jax.training import flops as flops_lib

_EXAMPLES = flags.DEFINE_integer("examples", 400, "records written per layout")
_BATCHES = flags.DEFINE_integer("batches", 12, "timed batches per layout (after 2 warm-up)")
_OUT = flags.DEFINE_string("data_out", os.path.join(os.path.dirname(__file__), "results"),
                           "where data_pipeline.json goes")
_MFU = flags.DEFINE_float("mfu", 0.45, "MFU assumed for the v5p host-core estimate")

PAPER = dict(length=2048, num_image_tokens=64, image_size=224, max_images=24, batch_size=8)
WORDS = ("a photo of the small red cat sitting on wooden table near window with morning light "
         "astronaut in white suit rocket launch pad cup of coffee on saucer man holding camera "
         "city street at night old building green field under blue sky").split()


def _sentence(rng: np.random.Generator, n: int) -> str:
  return " ".join(rng.choice(WORDS, n)).capitalize() + "."


def _photos() -> list[bytes]:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from tests.data import layouts  # pylint: disable=g-import-not-at-top
  out = []
  for name in ("chelsea.png", "astronaut.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
               "camera.png"):
    image = layouts.photo(name).convert("RGB")
    scale = 256 / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)),
                         Image.BICUBIC)
    out.append(layouts.encode(image, "JPEG", quality=90))
  return out


def write_corpora(root: str, n: int) -> dict[str, Any]:
  """One corpus per layout under `root`; returns what the sources need."""
  from tests.data import layouts  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  photos = _photos()
  captions = [_sentence(rng, int(rng.integers(8, 16))) for _ in range(n)]
  shards = 4
  for folder in ("wds", "parquet", "images", "mmc4", "mmc4_tar", "text"):
    os.makedirs(os.path.join(root, folder), exist_ok=True)
  for shard in range(shards):
    layouts.write_webdataset(os.path.join(root, "wds", f"{shard:05d}.tar"), [
        layouts.img2dataset_sample(f"{shard:05d}{i:04d}", photos[i % len(photos)], captions[i])
        for i in range(shard, n, shards)])
    layouts.write_img2dataset_parquet(
        os.path.join(root, "parquet", f"{shard:05d}.parquet"),
        [{"key": f"{shard:05d}{i:04d}", "caption": captions[i], "image": photos[i % len(photos)]}
         for i in range(shard, n, shards)], row_group_size=64)
  for i, data in enumerate(photos):
    with open(os.path.join(root, "images", f"{i}.jpg"), "wb") as f:
      f.write(data)
  docs, samples = [], []
  for d in range(n // 2):
    texts = [_sentence(rng, int(rng.integers(10, 25))) for _ in range(int(rng.integers(3, 7)))]
    k = int(rng.integers(2, 4))
    places = sorted(rng.choice(len(texts), k, replace=False).tolist())
    chosen = [int(rng.integers(len(photos))) for _ in range(k)]
    sim = np.full((k, len(texts)), 0.1)
    for row, place in enumerate(places):
      sim[row, place] = 0.3
    doc = layouts.mmc4_document(f"http://doc/{d}", texts,
                                [(f"{c}.jpg", p, 0.3) for c, p in zip(chosen, places)], sim)
    docs.append(doc)
    samples.append(layouts.openflamingo_sample(doc, {f"{c}.jpg": photos[c] for c in chosen}))
  for shard in range(shards):
    layouts.write_jsonl(os.path.join(root, "mmc4", f"docs_shard_{shard}_v2.jsonl.zip"),
                        docs[shard::shards], "zip")
    layouts.write_webdataset(os.path.join(root, "mmc4_tar", f"{shard:05d}.tar"),
                             samples[shard::shards])
  text_docs = [" ".join(_sentence(rng, 12) for _ in range(int(rng.integers(10, 40))))
               for _ in range(n)]
  for shard in range(shards):
    with open(os.path.join(root, "text", f"{shard}.jsonl"), "w") as f:
      f.writelines(json.dumps({"text": t}) + "\n" for t in text_docs[shard::shards])
    with open(os.path.join(root, "text", f"{shard}.txt"), "w") as f:
      f.write("\n\n".join(text_docs[shard::shards]) + "\n")
  corpus = os.path.join(root, "corpus.txt")
  with open(corpus, "w") as f:
    f.write("\n".join(captions + text_docs) + "\n")
  spm = vocab_lib.train_sentencepiece([corpus], 2000, os.path.join(root, "spm"),
                                      hard_vocab_limit=False)
  return {"root": root, "spm": spm}


def register_tasks(corpora: dict[str, Any]) -> dict[str, str]:
  """layout -> registered task name."""
  root = corpora["root"]
  vocabulary = vocab_lib.KosmosVocabulary(corpora["spm"])
  built = {
      "webdataset": ("image_text", sources.webdataset_source(f"{root}/wds/*.tar")),
      "img2dataset_parquet": ("image_text", sources.img2dataset_parquet_source(
          f"{root}/parquet/*.parquet")),
      "mmc4": ("interleaved", sources.mmc4_source(f"{root}/mmc4/*.zip",
                                                  image_dir=f"{root}/images")),
      "mmc4_tar": ("interleaved", sources.mmc4_tar_source(f"{root}/mmc4_tar/*.tar",
                                                          min_image_bytes=0)),
      "text": ("text", sources.text_source(f"{root}/text/*.txt")),
      "jsonl": ("text", sources.jsonl_text_source(f"{root}/text/*.jsonl")),
  }
  builders: dict[str, Callable[..., str]] = {
      "image_text": tasks.image_text_task, "interleaved": tasks.interleaved_task,
      "text": tasks.text_task}
  return {layout: builders[kind](f"bench_{layout}", source, vocabulary)
          for layout, (kind, source) in built.items()}


def measure(task_name: str, batches: int, **shape) -> dict[str, float]:
  """Batches/s of the training pipeline on `task_name` at `shape`, and what the rows hold."""
  ds = pipeline.get_dataset(task_name, seed=0, **shape)
  it = ds.as_numpy_iterator()
  for _ in range(2):
    next(it)
  examples = tokens = images = 0
  start = time.perf_counter()
  for _ in range(batches):
    batch = next(it)
    segments = batch["decoder_segment_ids"]
    examples += int(sum(len(np.unique(row[row > 0])) for row in segments))
    tokens += int((segments > 0).sum())
    images += int(batch["image_mask"].sum())
  seconds = time.perf_counter() - start
  rows = batches * shape["batch_size"]
  return {"examples_per_sec": examples / seconds, "tokens_per_sec": tokens / seconds,
          "images_per_sec": images / seconds, "rows_per_sec": rows / seconds,
          "packing_efficiency": tokens / (rows * shape["length"]),
          "examples_per_row": examples / rows}


DEMO_SHAPE = dict(length=128, num_image_tokens=8, image_size=32, max_images=6, batch_size=16)


def demo_consumption() -> dict[str, float]:
  """Examples/s the demo model's train step consumes: its rows' examples over its step time
  (the model and batch of gin/experiments/shapes_tiny.gin)."""
  import gin  # pylint: disable=g-import-not-at-top
  from kosmos_jax import gin_utils  # pylint: disable=g-import-not-at-top
  preset, overrides, batch, length, images = train_step.CONFIGS["tiny (demo)"]
  step = train_step.bench_jax("tiny (demo)", preset, overrides, batch, length, images)
  gin.clear_config()
  gin_utils.parse(["experiments/shapes_tiny.gin"], ["MODEL_DIR='/tmp/unused'"], finalize=False)
  mixture = gin.query_parameter("MIXTURE_OR_TASK_NAME/macro.value").scoped_configurable_fn()
  gin.clear_config()
  assert (batch, length, images) == (DEMO_SHAPE["batch_size"], DEMO_SHAPE["length"],
                                     DEMO_SHAPE["max_images"])
  shapes = measure(mixture, 20, **DEMO_SHAPE)
  consumed = shapes["examples_per_row"] * batch / step["step_seconds"]
  return {"step_seconds": step["step_seconds"], "examples_per_row": shapes["examples_per_row"],
          "consumed_examples_per_sec": consumed,
          "shapes_pipeline_examples_per_sec": shapes["examples_per_sec"]}


def v5p_host_cores(mixture: dict[str, float], cores: int, mfu: float) -> dict[str, float]:
  """Host cores a v5p host (4 chips) needs to feed the 1.6 B model at `mfu`: rows/s the chips
  consume over rows/s one core of this machine produced for the paper mixture."""
  model = config_lib.get_config("kosmos1")
  length = PAPER["length"]
  images_per_row = mixture["images_per_sec"] / mixture["rows_per_sec"]
  flops_per_row = flops_lib.train_flops_per_step(model, 1, length, round(images_per_row),
                                                 vision_trainable="last_layer")
  rows_per_sec_host = 4 * mfu * flops_lib.PEAK_FLOPS["TPU v5p"] / flops_per_row
  per_core = mixture["rows_per_sec"] / cores
  return {"mfu": mfu, "tokens_per_sec_per_chip": rows_per_sec_host * length / 4,
          "rows_per_sec_per_host": rows_per_sec_host, "rows_per_sec_per_core_here": per_core,
          "host_cores_needed": rows_per_sec_host / per_core}


def main(argv):
  del argv
  cores = len(os.sched_getaffinity(0))
  results: dict[str, Any] = {"cores": cores, "shape": PAPER, "layouts": {}}
  with tempfile.TemporaryDirectory() as root:
    corpora = write_corpora(root, _EXAMPLES.value)
    names = register_tasks(corpora)
    for layout, task in names.items():
      results["layouts"][layout] = measure(task, _BATCHES.value, **PAPER)
      print(layout, json.dumps({k: round(v, 2) for k, v in results["layouts"][layout].items()}))
    mixture = tasks.token_mixture(
        "bench_paper_mixture", {names["text"]: tasks.PAPER_TOKENS_PER_STEP["text"],
                                names["webdataset"]: tasks.PAPER_TOKENS_PER_STEP["image_caption"],
                                names["mmc4"]: tasks.PAPER_TOKENS_PER_STEP["interleaved"]},
        num_image_tokens=PAPER["num_image_tokens"], length=PAPER["length"])
    results["paper_mixture"] = measure(mixture, _BATCHES.value, **PAPER)
    print("paper mixture", json.dumps({k: round(v, 2) for k, v in results["paper_mixture"].items()}))
    small = tasks.image_text_task("bench_webdataset_32px", sources.webdataset_source(
        f"{root}/wds/*.tar"), vocab_lib.KosmosVocabulary(corpora["spm"]), image_size=32)
    results["webdataset_at_demo_shape"] = measure(small, 4 * _BATCHES.value, **DEMO_SHAPE)
  demo = demo_consumption()
  demo["webdataset_demo_shape_over_consumed"] = (
      results["webdataset_at_demo_shape"]["examples_per_sec"] / demo["consumed_examples_per_sec"])
  demo["webdataset_224px_over_consumed"] = (results["layouts"]["webdataset"]["examples_per_sec"]
                                            / demo["consumed_examples_per_sec"])
  demo["shapes_over_consumed"] = (demo["shapes_pipeline_examples_per_sec"]
                                  / demo["consumed_examples_per_sec"])
  results["demo_train_step"] = demo
  results["v5p_host"] = v5p_host_cores(results["paper_mixture"], cores, _MFU.value)
  print("demo", json.dumps({k: round(v, 3) for k, v in demo.items()}))
  print("v5p", json.dumps({k: round(v, 2) for k, v in results["v5p_host"].items()}))
  os.makedirs(_OUT.value, exist_ok=True)
  path = os.path.join(_OUT.value, "data_pipeline.json")
  with open(path, "w") as f:
    json.dump(results, f, indent=1)
  print("wrote", path)


if __name__ == "__main__":
  app.run(main)
