"""Decoding throughput: new tokens/s of our cached greedy decoding against Hugging Face's
`Kosmos2ForConditionalGeneration.generate` (PyTorch, CPU), same config, same weights, same run.

  .venv/bin/python -m benchmarks.decode [--new_tokens=32] [--repeats=5] [--batch_sizes=1,8]

Config (the mid-size benchmark config, 8.9 M params): text 4 x 256, 4 heads, FFN 1024, vocab 8000; CLIP-style
ViT 4 x 256 at 224 px / patch 14; 64 latents. HF's random weights are converted into ours with
`kosmos_jax.convert.hf_kosmos2`, so both sides compute the same function; the benchmark checks
that both emit the same tokens. Prompt: `<s> <image>` + 64 image slots + `</image>` + 8 text
tokens (75 tokens), one image per row, no padding. Greedy, fp32, exactly `--new_tokens` new tokens
(eos disabled on both sides).

Each measurement: `--warmup` calls (compilation included in ours), then the median of
`--repeats` timed calls of the whole generate (image encoding + prefill + decode loop), each side
timed in its own process, in two alternating rounds (neither framework's idle threads compete
with the other's calls; the machine may be shared, so load hits both alike). HF runs with each of `--torch_threads`
and the faster is reported: when other processes compete for the cores, torch's OpenMP barriers
make 2 threads up to 10x slower than 1 on 2 cores. A second measurement with one new token
gives the prefill cost, so
  decode tok/s = batch * (new_tokens - 1) / (t(new_tokens) - t(1))
is the steady per-token rate. Writes benchmarks/results/decode.json and prints a table.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import train_step
from kosmos_jax.inference import decoding
from kosmos_jax.convert import hf_kosmos2
from kosmos_jax.models import kosmos

_NEW = flags.DEFINE_integer("new_tokens", 32, "new tokens per row")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed calls per measurement (median reported)")
_WARMUP = flags.DEFINE_integer("warmup", 2, "untimed calls before timing")
_BATCHES = flags.DEFINE_list("batch_sizes", ["1", "8"], "batch sizes")
_THREADS = flags.DEFINE_list("torch_threads", ["1", str(os.cpu_count())],
                             "torch intra-op thread counts to try for HF (best one reported)")
_OUT = flags.DEFINE_string("decode_out", os.path.join(os.path.dirname(__file__), "results",
                                               "decode.json"), "JSON results")

HF_CONFIG = dict(
    text_config=dict(vocab_size=8000, embed_dim=256, layers=4, attention_heads=4, ffn_dim=1024,
                     max_position_embeddings=512, dropout=0.0, attention_dropout=0.0),
    vision_config=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                       num_attention_heads=4, image_size=224, patch_size=14),
    latent_query_num=64)
BOS, PAD, IMAGE_START, IMAGE_SLOT, IMAGE_END = 0, 1, 5, 6, 7
TEXT_TOKENS = 8


def build_models(hf_config: dict | None = None):
  """A random HF Kosmos-2 (weights re-drawn so greedy output varies) and the same in ours."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  hf = transformers.Kosmos2ForConditionalGeneration(
      transformers.Kosmos2Config(**(hf_config or HF_CONFIG)))
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, p in hf.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if "embed_tokens" in name:
        p.copy_(0.05 * noise)
      elif p.ndim >= 2:
        p.copy_(2.0 * noise / p[0].numel() ** 0.5)
      elif name.endswith("weight"):
        p.copy_(1.0 + 0.3 * noise)
      else:
        p.copy_(0.1 * noise)
  hf.eval()
  hf.generation_config.eos_token_id = None      # exactly max_new_tokens, as ours with eos_id=None
  config, _ = hf_kosmos2.config_from_hf(hf.config.to_dict())
  state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
  params = jax.device_put(hf_kosmos2.params_from_state_dict(state, config))
  return hf, config, params


def prompt_batch(config, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
  """`<s> <image> [64 slots] </image> text`, and a random 224 px image per row."""
  rng = np.random.RandomState(seed)
  q = config.num_image_tokens
  text = rng.randint(10, config.text.vocab_size, (batch, TEXT_TOKENS))
  ids = np.concatenate([np.tile([BOS, IMAGE_START] + [IMAGE_SLOT] * q + [IMAGE_END], (batch, 1)),
                        text], axis=1).astype(np.int32)
  slots = np.zeros_like(ids)
  slots[:, 2:2 + q] = 1
  v = config.vision
  pixels = rng.randn(batch, 3, v.image_size, v.image_size).astype(np.float32)  # normalised
  return dict(input_ids=ids, image_embeds_position_mask=slots, pixel_values=pixels,
              attention_mask=np.ones_like(ids))


def timing_child(side: str, spec: dict) -> dict:
  """In a fresh process: seconds of each timed generate call of one side ("ours", or "hf" at
  each torch thread count) per batch size and new-token count. JSON-able:
  {"<label> <batch> <new>": [seconds, ...]}."""
  hf, config, params = build_models(spec["hf_config"])
  fns = {}
  for batch_size in spec["batch_sizes"]:
    batch = prompt_batch(config, batch_size)
    for n in (spec["new"], 1):
      if side == "ours":
        fns[f"ours {batch_size} {n}"] = ours_generate(config, params, batch, n)
      else:
        for t in spec["threads"]:
          fns[f"hf_{t}_threads {batch_size} {n}"] = hf_generate(hf, batch, n, t)
  times = {}
  for label, fn in fns.items():
    for _ in range(spec["warmup"]):
      fn()
    times[label] = []
    for _ in range(spec["repeats"]):
      start = time.perf_counter()
      fn()
      times[label].append(time.perf_counter() - start)
  return times


def isolated_times(spec: dict, rounds: int = 2) -> dict[str, float]:
  """Median seconds per call of each label, each side in its own process, alternating rounds
  (neither framework's idle threads compete with the other's calls; load hits both alike)."""
  times: dict[str, list[float]] = {}
  for _ in range(rounds):
    for side in ("ours", "hf"):
      result = train_step.run_child("timing_child", side, spec, module="decode")
      if result is None:
        raise RuntimeError(f"the {side} decode timing process failed (its stderr is above)")
      for label, t in result.items():
        times.setdefault(label, []).extend(t)
  return {label: statistics.median(t) for label, t in times.items()}


def ours_generate(config, params, batch, new_tokens):
  # As a server does (`Runner`): the decoding layer layout once, not inside every call.
  model, params = decoding.decoding_layout(kosmos.Kosmos(config), params)
  images = jnp.asarray(np.transpose(batch["pixel_values"], (0, 2, 3, 1))[:, None])
  tokens = jnp.asarray(batch["input_ids"])
  mask = jnp.asarray(batch["image_embeds_position_mask"])
  decode_config = decoding.DecodeConfig(max_new_tokens=new_tokens, eos_id=None, pad_id=PAD)

  def run():
    out = decoding.decode(model, params, tokens, decode_config, images=images,
                          image_token_mask=mask)
    return np.asarray(jax.block_until_ready(out.sequences))
  return run


def hf_generate(hf, batch, new_tokens, threads=None):
  import torch  # pylint: disable=g-import-not-at-top
  inputs = {k: torch.from_numpy(v) for k, v in batch.items()}

  def run():
    if threads:
      torch.set_num_threads(threads)
    with torch.no_grad():
      return hf.generate(**inputs, max_new_tokens=new_tokens, do_sample=False, num_beams=1,
                         use_cache=True).numpy()
  return run


def measure(batch_sizes, new: int, warmup: int, repeats: int, threads,
            hf_config: dict | None = None, rounds: int = 2) -> tuple[list[dict], object]:
  """Ours vs HF generate at each batch size: full-call and steady per-token rates, same tokens.
  `repeats` timed calls per label in all, split over `rounds` alternating process pairs.
  Returns (rows, our model config)."""
  hf_config = hf_config or HF_CONFIG
  hf, config, params = build_models(hf_config)
  spec = {"hf_config": hf_config, "batch_sizes": list(batch_sizes), "new": new,
          "threads": list(threads), "warmup": warmup,
          "repeats": max(1, -(-repeats // rounds))}
  seconds = isolated_times(spec, rounds)
  rows = []
  for batch_size in batch_sizes:
    batch = prompt_batch(config, batch_size)
    same = np.array_equal(ours_generate(config, params, batch, new)(),
                          hf_generate(hf, batch, new, threads[-1])())
    result = {"batch": batch_size, "prompt_len": int(batch["input_ids"].shape[1]),
              "new_tokens": new, "same_tokens_as_hf": bool(same)}
    for name in ["ours"] + [f"hf_{t}_threads" for t in threads]:
      full, first = seconds[f"{name} {batch_size} {new}"], seconds[f"{name} {batch_size} 1"]
      result[name] = {"seconds": full, "new_tok_per_s": batch_size * new / full,
                      "prefill_seconds": first,
                      "decode_tok_per_s": batch_size * (new - 1) / max(full - first, 1e-9)}
    # HF at its better torch thread count (on a shared 2-core machine one thread often wins).
    best = min((f"hf_{t}_threads" for t in threads), key=lambda k: result[k]["seconds"])
    result["hf"] = dict(result[best], torch_threads=int(best.split("_")[1]))
    result["speedup"] = result["ours"]["new_tok_per_s"] / result["hf"]["new_tok_per_s"]
    rows.append(result)
  return rows, config


def main(argv):
  del argv
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  new = _NEW.value
  rows, config = measure([int(b) for b in _BATCHES.value], new, _WARMUP.value, _REPEATS.value,
                         [int(t) for t in _THREADS.value])
  print(f"\nGreedy decoding, {config.text.num_layers}x{config.text.embed_dim} text + "
        f"{config.vision.num_layers}x{config.vision.embed_dim} ViT @ {config.vision.image_size}px,"
        f" prompt {rows[0]['prompt_len']} tokens (64 image), {new} new tokens, fp32, "
        f"{os.cpu_count()} CPU cores")
  print("| batch | ours new tok/s | HF new tok/s | ours / HF | ours decode tok/s | HF decode tok/s "
        "| ours prefill ms | HF prefill ms | HF torch threads | same tokens |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    o, h = r["ours"], r["hf"]
    print(f"| {r['batch']} | {o['new_tok_per_s']:.0f} | {h['new_tok_per_s']:.0f} | "
          f"{r['speedup']:.2f}x | {o['decode_tok_per_s']:.0f} | {h['decode_tok_per_s']:.0f} | "
          f"{1e3 * o['prefill_seconds']:.0f} | {1e3 * h['prefill_seconds']:.0f} | "
          f"{h['torch_threads']} | {r['same_tokens_as_hf']} |")
  report = {"benchmark": "decode", "config": HF_CONFIG, "results": rows,
            "warmup": _WARMUP.value, "repeats": _REPEATS.value,
            "env": {"jax": jax.__version__, "torch": torch.__version__,
                    "transformers": transformers.__version__, "cpu_count": os.cpu_count(),
                    "backend": jax.default_backend(),
                    "machine": platform.machine()}}
  os.makedirs(os.path.dirname(_OUT.value), exist_ok=True)
  with open(_OUT.value, "w") as f:
    json.dump(report, f, indent=2)
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
