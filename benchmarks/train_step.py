"""Train-step throughput and memory: tokens/s and peak memory for the tiny and a mid-size config,
side by side with Hugging Face's PyTorch Kosmos-2 train step on the same mid-size config.

  .venv/bin/python benchmarks/train_step.py [--steps=7] [--skip_hf]

Mid-size (8.9 M params): text 4 x 256 (vocab 8000), CLIP-style
ViT 4 x 256 at 224 px / patch 14, 64 latents; batch 8 x 256 tokens with 64 image positions.
Writes benchmarks/results/train_step.json and prints a table. Timings: warm-up steps, then the
median of `--steps`.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np

from kosmos_jax.training import optimizers
from kosmos_jax.training import partitioning
from kosmos_jax.training import trainer as trainer_lib
from kosmos_jax.models import config as config_lib

_STEPS = flags.DEFINE_integer("steps", 7, "timed steps (median reported)")
_SKIP_HF = flags.DEFINE_bool("skip_hf", False, "skip the PyTorch reference")
_OUT = flags.DEFINE_string("out", os.path.join(os.path.dirname(__file__), "results",
                                               "train_step.json"), "JSON results")

MID = {"text.vocab_size": 8000, "text.embed_dim": 256, "text.num_layers": 4,
       "text.num_heads": 4, "text.ffn_dim": 1024, "text.max_len": 512,
       "text.xpos": False, "text.abs_pos": "sinusoidal_fairseq",
       "vision.image_size": 224, "vision.patch_size": 14, "vision.embed_dim": 256,
       "vision.num_layers": 4, "vision.num_heads": 4, "vision.mlp_dim": 1024,
       "connector.num_latents": 64, "vision_trainable": "all"}
CONFIGS = {
    # The model of gin/experiments/shapes_tiny.gin at its batch: 16 rows x 128, 6 images each.
    "tiny (demo)": ("tiny", {"text.vocab_size": 128, "text.embed_dim": 128, "text.ffn_dim": 256,
                             "text.scale_embedding": False, "vision.embed_dim": 128,
                             "vision.mlp_dim": 256, "vision.l2_normalize": False,
                             "connector.kind": "perceiver", "vision_trainable": "all"},
                    16, 128, 6),
    "mid (8.9 M)": ("tiny", MID, 8, 256, 1),
}


def synthetic_batch(config, batch: int, length: int, images: int, seed: int = 0) -> dict:
  """Rows with `images` image blocks at the start, text after; loss on the text."""
  rng = np.random.RandomState(seed)
  q, v = config.num_image_tokens, config.vision
  tokens = rng.randint(4, config.text.vocab_size, (batch, length + 1)).astype(np.int32)
  mask = np.zeros((batch, length), np.int32)
  weights = np.ones((batch, length), np.float32)
  for k in range(images):
    start = 1 + k * (q + 2)
    mask[:, start:start + q] = 1
    weights[:, start - 1:start + q + 1] = 0
  return {"decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
          "decoder_loss_weights": weights, "decoder_segment_ids": np.ones((batch, length), np.int32),
          "decoder_positions": np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length)),
          "decoder_image_token_mask": mask,
          "images": rng.randint(0, 256, (batch, images, v.image_size, v.image_size, 3)).astype(np.uint8),
          "image_mask": np.ones((batch, images), np.int32)}


def time_steps(fn, warmup: int, steps: int) -> list[float]:
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def bench_jax(name: str, preset: str, overrides: dict, batch: int, length: int, images: int) -> dict:
  config = config_lib.get_config(preset, overrides)
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=1), jax.devices()[:1])
  trainer = trainer_lib.Trainer(config, optimizers.OptimizerConfig(learning_rate=1e-4),
                                trainer_lib.TrainerConfig(total_steps=1000), mesh, "dp")
  state = trainer.init_state()
  data = partitioning.global_batch(synthetic_batch(config, batch, length, images), mesh)
  rng = jax.random.key(0)
  with jax.set_mesh(mesh):
    compile_start = time.perf_counter()
    compiled = trainer._train_step.lower(state, data, rng).compile()  # pylint: disable=protected-access
    compile_seconds = time.perf_counter() - compile_start
  memory = compiled.memory_analysis()
  holder = {"state": state}

  def step():
    holder["state"], metrics = trainer.train_step(holder["state"], data, rng)
    jax.block_until_ready(metrics)
  times = time_steps(step, 2, _STEPS.value)
  median = statistics.median(times)
  params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
  xla_bytes = None
  if memory is not None:
    xla_bytes = (memory.temp_size_in_bytes + memory.argument_size_in_bytes
                 + memory.output_size_in_bytes - memory.alias_size_in_bytes)
  return {"name": name, "framework": "jax", "params": int(params), "batch": batch,
          "length": length, "images_per_row": images, "step_seconds": median,
          "tokens_per_sec": batch * length / median, "compile_seconds": compile_seconds,
          "xla_peak_bytes": xla_bytes,
          "process_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def bench_hf_mid(batch: int, length: int) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import Kosmos2Config, Kosmos2ForConditionalGeneration  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  cfg = Kosmos2Config(
      text_config=dict(vocab_size=8000, embed_dim=256, layers=4, attention_heads=4, ffn_dim=1024,
                       max_position_embeddings=512),
      vision_config=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                         num_attention_heads=4, image_size=224, patch_size=14),
      latent_query_num=64)
  model = Kosmos2ForConditionalGeneration(cfg).train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
  ids = torch.randint(4, 8000, (batch, length))
  mask = torch.zeros(batch, length, dtype=torch.bool)
  mask[:, 1:65] = True
  labels = ids.clone()
  labels[:, :66] = -100
  pixels = torch.randn(batch, 3, 224, 224)

  def step():
    out = model(pixel_values=pixels, input_ids=ids, image_embeds_position_mask=mask,
                attention_mask=torch.ones_like(ids), labels=labels)
    out.loss.backward()
    opt.step()
    opt.zero_grad()
  times = time_steps(step, 2, _STEPS.value)
  median = statistics.median(times)
  return {"name": "mid (8.9 M)", "framework": f"torch {torch.__version__} (HF Kosmos-2)",
          "params": sum(p.numel() for p in model.parameters()), "batch": batch, "length": length,
          "images_per_row": 1, "step_seconds": median, "tokens_per_sec": batch * length / median,
          "torch_threads": torch.get_num_threads(),
          "process_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def main(argv):
  del argv
  results = [bench_jax(name, *spec) for name, spec in CONFIGS.items()]
  if not _SKIP_HF.value:
    try:
      results.append(bench_hf_mid(8, 256))
    except ImportError as e:
      print(f"(skipping the PyTorch reference: {e})", file=sys.stderr)
  header = f"{'config':<14} {'framework':<28} {'params':>10} {'batch x len':>12} " \
           f"{'s/step':>8} {'tokens/s':>9} {'XLA peak MiB':>13}"
  print(header)
  for r in results:
    peak = r.get("xla_peak_bytes")
    print(f"{r['name']:<14} {r['framework']:<28} {r['params']:>10,} "
          f"{str(r['batch']) + ' x ' + str(r['length']):>12} {r['step_seconds']:>8.3f} "
          f"{r['tokens_per_sec']:>9,.0f} {peak / 2**20 if peak else float('nan'):>13.1f}")
  os.makedirs(os.path.dirname(_OUT.value), exist_ok=True)
  with open(_OUT.value, "w") as f:
    json.dump({"device": jax.devices()[0].device_kind, "cpus": os.cpu_count(),
               "results": results}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
