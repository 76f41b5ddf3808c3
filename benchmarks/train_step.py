"""Train-step throughput and memory, ours vs Hugging Face's PyTorch Kosmos-2, same model shape.

  .venv/bin/python -m benchmarks.train_step [--steps=7] [--skip_hf]

Mid-size benchmark config (8.9 M params): text 4 x 256 (vocab 8000), CLIP-style ViT 4 x 256 at
224 px / patch 14, 64 latents; batch 8 x 256 tokens with 64 image positions. Both sides run a
full AdamW step (lr 1e-4, weight decay 0.01 on ours' default mask, HF: all params) in fp32 on
the same shapes. Timing: each side in its own process (so neither framework's idle worker
threads compete with the other's step), in alternating rounds (the machine may be shared, so a
load change hits both alike); warm-up steps, then the median step. Peak step memory: HF's is
its train state plus the most its step adds above it (peak RSS in a child process); ours is
XLA's buffer analysis of our compiled step (arguments + temporaries + outputs - donated).
`benchmarks.run` calls these functions for more shapes; this script prints the benchmark
config only.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np

from kosmos_jax.models import config as config_lib
from kosmos_jax.training import flops as flops_lib
from kosmos_jax.training import optimizers
from kosmos_jax.training import partitioning
from kosmos_jax.training import trainer as trainer_lib

MID = {"text.vocab_size": 8000, "text.embed_dim": 256, "text.num_layers": 4,
       "text.num_heads": 4, "text.ffn_dim": 1024, "text.max_len": 512,
       "text.xpos": False, "text.abs_pos": "sinusoidal_fairseq",
       "vision.image_size": 224, "vision.patch_size": 14, "vision.embed_dim": 256,
       "vision.num_layers": 4, "vision.num_heads": 4, "vision.mlp_dim": 1024,
       "connector.num_latents": 64, "vision_trainable": "all"}
# name -> (preset, overrides, batch, length, images per row); `bench_jax` runs one of them.
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


def jax_step(overrides: dict, batch: int, length: int, images: int = 1, dtype: str = "float32",
             preset: str = "tiny"):
  """(step(), info): one jitted AdamW train step of our model on a fixed synthetic batch."""
  config = config_lib.get_config(preset, {**overrides, "dtype": dtype})
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=1), jax.devices()[:1])
  trainer = trainer_lib.Trainer(config, optimizers.OptimizerConfig(learning_rate=1e-4),
                                trainer_lib.TrainerConfig(total_steps=1000), mesh, "dp")
  holder = {"state": trainer.init_state()}
  data = partitioning.global_batch(synthetic_batch(config, batch, length, images), mesh)
  rng = jax.random.key(0)
  with jax.set_mesh(mesh):
    start = time.perf_counter()
    compiled = trainer._train_step.lower(holder["state"], data, rng).compile()  # pylint: disable=protected-access
    compile_seconds = time.perf_counter() - start
  memory = compiled.memory_analysis()
  xla_bytes = None if memory is None else (
      memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
      - memory.alias_size_in_bytes)

  def step():
    holder["state"], metrics = trainer.train_step(holder["state"], data, rng)
    jax.block_until_ready(metrics)
  params = sum(x.size for x in jax.tree_util.tree_leaves(holder["state"].params))
  flops = flops_lib.train_flops_per_step(config, batch, length, images,
                                         vision_trainable=trainer.vision_trainable)
  state_bytes = lambda: sum(x.nbytes for x in jax.tree_util.tree_leaves(holder["state"]))
  return step, {"params": int(params), "compile_seconds": compile_seconds,
                "state_bytes": state_bytes,
                "xla_peak_bytes": xla_bytes, "flops_per_step": float(flops)}


def hf_config(overrides: dict):
  """The HF Kosmos2Config of the same shape as our overrides (text, ViT, latents)."""
  from transformers import Kosmos2Config  # pylint: disable=g-import-not-at-top
  o = {**MID, **overrides}
  text = config_lib.get_config("tiny", o).text
  return Kosmos2Config(
      text_config=dict(vocab_size=o["text.vocab_size"], embed_dim=o["text.embed_dim"],
                       layers=o["text.num_layers"], attention_heads=o["text.num_heads"],
                       ffn_dim=o["text.ffn_dim"], max_position_embeddings=o["text.max_len"],
                       # the same dropout as ours (HF's defaults are 0.1): same work per step
                       dropout=text.dropout, attention_dropout=text.attention_dropout,
                       activation_dropout=text.activation_dropout),
      vision_config=dict(hidden_size=o["vision.embed_dim"], intermediate_size=o["vision.mlp_dim"],
                         num_hidden_layers=o["vision.num_layers"],
                         num_attention_heads=o["vision.num_heads"],
                         image_size=o["vision.image_size"], patch_size=o["vision.patch_size"]),
      latent_query_num=o["connector.num_latents"])


def hf_step(overrides: dict, batch: int, length: int, dtype: str = "float32"):
  """(step(), info): one AdamW step of HF Kosmos2ForConditionalGeneration, same shapes."""
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import Kosmos2ForConditionalGeneration  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  cfg = hf_config(overrides)
  model = Kosmos2ForConditionalGeneration(cfg).train()
  torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
  model = model.to(torch_dtype)
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
  q = cfg.latent_query_num
  ids = torch.randint(4, cfg.text_config.vocab_size, (batch, length))
  mask = torch.zeros(batch, length, dtype=torch.bool)
  mask[:, 1:1 + q] = True
  labels = ids.clone()
  labels[:, :q + 2] = -100
  size = cfg.vision_config.image_size
  pixels = torch.randn(batch, 3, size, size, dtype=torch_dtype)

  def step():
    out = model(pixel_values=pixels, input_ids=ids, image_embeds_position_mask=mask,
                attention_mask=torch.ones_like(ids), labels=labels)
    out.loss.backward()
    opt.step()
    opt.zero_grad()
  def state_bytes():
    tensors = list(model.parameters()) + [v for st in opt.state.values() for v in st.values()
                                          if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in tensors)
  return step, {"params": sum(p.numel() for p in model.parameters()),
                "state_bytes": state_bytes,
                "framework": f"torch {torch.__version__} (HF Kosmos-2)"}


def time_steps(fn, warmup: int, steps: int) -> list[float]:
  """Seconds of each of `steps` calls after `warmup` untimed ones."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def bench_jax(name: str, preset: str, overrides: dict, batch: int, length: int, images: int,
              steps: int = 7) -> dict:
  """Our step alone on one of `CONFIGS`: median seconds, tokens/s, compile time, XLA peak."""
  step, info = jax_step(overrides, batch, length, images, preset=preset)
  median = statistics.median(time_steps(step, 2, steps))
  return {"name": name, "framework": "jax", "batch": batch, "length": length,
          "images_per_row": images, "step_seconds": median,
          "tokens_per_sec": batch * length / median, **info}


def timing_child(side: str, spec: dict) -> dict:
  """In a fresh process: `warmup` untimed then `steps` timed train steps of one side ("jax", or
  "hf" at each of `spec["threads"]` torch thread counts). Returns {"times": {label: [s, ...]},
  "info": {...}} (JSON-able)."""
  args = (spec["overrides"], spec["batch"], spec["length"])
  if side == "jax":
    step, info = jax_step(*args, dtype=spec["dtype"])
    fns = {"ours": step}
  else:
    import torch  # pylint: disable=g-import-not-at-top
    step, info = hf_step(*args, dtype=spec["dtype"])
    fns = {f"hf_{t}": (lambda t=t: (torch.set_num_threads(t), step())) for t in spec["threads"]}
  times = {label: time_steps(fn, spec["warmup"], spec["steps"]) for label, fn in fns.items()}
  return {"times": times, "info": {k: v for k, v in info.items() if not callable(v)}}


def run_child(function: str, side: str, spec: dict, env: dict | None = None,
              module: str = "train_step") -> dict | None:
  """`benchmarks.<module>.<function>(side, spec)` in a subprocess; its JSON result, or None if
  it fails (its stderr printed)."""
  code = (f"import json,sys; from benchmarks import {module} as m; "
          f"print('RESULT', json.dumps(m.{function}({side!r}, json.loads(sys.argv[1]))))")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    out = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], cwd=root,
                         capture_output=True, env={**os.environ, **(env or {})}, text=True,
                         timeout=1800, check=True).stdout
  except (subprocess.SubprocessError, OSError) as e:
    detail = getattr(e, "stderr", "") or ""
    print(f"({function} {side} failed: {e}; {detail[-800:]})", file=sys.stderr)
    return None
  lines = [l for l in out.splitlines() if l.startswith("RESULT ")]
  return json.loads(lines[-1][7:]) if lines else None


def isolated_medians(spec: dict, hf: bool, rounds: int = 2) -> tuple[dict, dict, dict]:
  """Median step seconds of each side, every side in its own process, in alternating rounds
  (ours, HF, ours, HF, ...): one framework's idle worker threads (torch's OpenMP threads spin
  after each parallel region) never steal cores from the other's step, and a load change on a
  shared machine hits both sides alike. Returns (medians, our info, HF info)."""
  times: dict[str, list[float]] = {}
  infos: dict[str, dict] = {}
  for _ in range(rounds):
    for side in ["jax"] + (["hf"] if hf else []):
      result = run_child("timing_child", side, spec)
      if result is None:
        raise RuntimeError(f"the {side} timing process failed (its stderr is above)")
      infos[side] = result["info"]
      for label, t in result["times"].items():
        times.setdefault(label, []).extend(t)
  medians = {label: statistics.median(t) for label, t in times.items()}
  return medians, infos["jax"], infos.get("hf", {})


def _status_bytes(field: str) -> int:
  """VmRSS / VmHWM of this process (/proc/self/status; VmHWM is per address space, so unlike
  ru_maxrss it does not carry over the parent's peak through fork + exec)."""
  with open("/proc/self/status") as f:
    line = next(l for l in f if l.startswith(field + ":"))
  return int(line.split()[1]) * 1024


def memory_child(side: str, spec: dict) -> dict:
  """In a fresh process, HF's side: the train state (params + optimizer moments) plus the most a
  step adds on top of it (peak RSS over 2 steps after a warm-up step, minus the RSS before
  them; the peak is reset with /proc/self/clear_refs so compilation does not count).
  Returns {"peak_step_bytes", "state_bytes", "transient_bytes"}.

  Not used for our side: XLA:CPU keeps its step's temporaries resident from the warm-up step
  on, so they are already in the "before" RSS and this method would miss them (it measured
  ~35 MiB of transient for a step whose temporaries are ~0.9 GiB). Ours is XLA's buffer
  analysis of the compiled step instead, which is exact for what the step allocates."""
  if side != "hf":
    raise ValueError(f"memory_child measures the HF side only, not {side!r}")
  step, info = hf_step(spec["overrides"], spec["batch"], spec["length"], dtype=spec["dtype"])
  step()
  before = _status_bytes("VmRSS")
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")                       # resets VmHWM to the current RSS
  step()
  step()
  transient = max(_status_bytes("VmHWM") - before, 0)
  state = info["state_bytes"]()
  return {"peak_step_bytes": state + transient, "state_bytes": state,
          "transient_bytes": transient}


def measure_memory(side: str, overrides: dict, batch: int, length: int,
                   dtype: str = "float32") -> int | None:
  """Runs `memory_child` in a subprocess (a clean allocator); None if it fails."""
  spec = {"overrides": overrides, "batch": batch, "length": length, "dtype": dtype}
  # A fixed mmap threshold: every block >= 64 KiB is mapped and unmapped, so RSS follows the
  # live bytes (glibc otherwise keeps freed heap and hides reuse).
  env = {"MALLOC_MMAP_THRESHOLD_": "65536", "KOSMOS_JAX_SYSTEM_MALLOC": "1"}
  result = run_child("memory_child", side, spec, env)
  return None if result is None else result["peak_step_bytes"]


def compare(name: str, overrides: dict, batch: int, length: int, *, steps: int = 6,
            warmup: int = 5, hf: bool = True, memory: bool = True,
            dtype: str = "float32", rounds: int = 2, hf_threads=None) -> dict:
  """Ours vs HF on one shape: step seconds, tokens/s, ratio, peak memory of each side.
  `steps` timed steps per side in all, split over `rounds` alternating process pairs, each
  after `warmup` untimed steps: a fresh process's heap keeps growing for its first few steps
  (a step then page-faults its whole working set in again, up to +1 s at narrow-deep; see
  docs/performance.md), a start-up cost that a training run of thousands of steps pays once."""
  # HF at each torch thread count, the faster reported: on a shared machine torch's OpenMP
  # barriers can make all-core runs much slower than one thread.
  threads = sorted(set(hf_threads or {1, os.cpu_count() or 1}))
  spec = {"overrides": overrides, "batch": batch, "length": length, "dtype": dtype,
          "threads": threads, "warmup": warmup, "steps": max(1, -(-steps // rounds))}
  seconds, info, hf_info = isolated_medians(spec, hf, rounds)
  row = {"name": name, "dtype": dtype, "batch": batch, "length": length,
         "params": info["params"], "ours_step_seconds": seconds["ours"],
         "ours_tokens_per_sec": batch * length / seconds["ours"],
         "ours_compile_seconds": info["compile_seconds"],
         "ours_xla_peak_bytes": info["xla_peak_bytes"],
         "flops_per_step": info["flops_per_step"],
         "ours_tflops_per_sec": info["flops_per_step"] / seconds["ours"] / 1e12}
  peak = flops_lib.peak_flops_per_device(jax.devices()[0])
  row["ours_mfu"] = None if not peak else info["flops_per_step"] / seconds["ours"] / peak
  if hf:
    best = min(threads, key=lambda t: seconds[f"hf_{t}"])
    row.update(hf_step_seconds=seconds[f"hf_{best}"],
               hf_tokens_per_sec=batch * length / seconds[f"hf_{best}"],
               hf_params=hf_info["params"], hf_framework=hf_info["framework"],
               hf_torch_threads=best, speedup=seconds[f"hf_{best}"] / seconds["ours"],
               hf_seconds_by_threads={t: seconds[f"hf_{t}"] for t in threads})
  if memory:
    # Ours: XLA's analysis (arguments + temporaries + outputs - donated), see memory_child.
    row["ours_peak_step_bytes"] = info["xla_peak_bytes"]
    if hf:
      row["hf_peak_step_bytes"] = measure_memory("hf", overrides, batch, length, dtype)
  return row


_STEPS = flags.DEFINE_integer("steps", 7, "timed steps per side (median reported)")
_SKIP_HF = flags.DEFINE_bool("skip_hf", False, "skip the PyTorch reference")
_OUT = flags.DEFINE_string("train_out", os.path.join(os.path.dirname(__file__), "results",
                                               "train_step.json"), "JSON results")


def main(argv):
  del argv
  row = compare("mid (8.9 M)", MID, 8, 256, steps=_STEPS.value, hf=not _SKIP_HF.value)
  print(json.dumps(row, indent=1))
  os.makedirs(os.path.dirname(_OUT.value), exist_ok=True)
  with open(_OUT.value, "w") as f:
    json.dump({"device": jax.devices()[0].device_kind, "cpus": os.cpu_count(),
               "results": [row]}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
