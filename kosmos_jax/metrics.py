"""Metric sinks: TensorBoard and the log through clu metric writers, plus `metrics.jsonl` (one
JSON object per logged step, with `step`) so runs can be compared by scripts; a progress line
with ETA; model FLOPs and MFU estimates."""
from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any, Mapping, Optional

from clu import metric_writers
import jax

from kosmos_jax.models.config import KosmosConfig

# Dense bf16 peak FLOP/s per chip by device_kind prefix (public spec sheets).
PEAK_FLOPS = {
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
    "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12,
}


def peak_flops_per_device(device: jax.Device, override: Optional[float] = None) -> Optional[float]:
  if override:
    return override
  kind = getattr(device, "device_kind", "")
  for prefix, flops in sorted(PEAK_FLOPS.items(), key=lambda kv: -len(kv[0])):
    if kind.startswith(prefix):
      return flops
  return None  # CPUs and unknown chips: MFU is not reported


def _matmul_params_per_layer_text(c) -> int:
  d, f = c.text.embed_dim, c.text.ffn_dim
  return 4 * d * d + 2 * d * f


def train_flops_per_step(config: KosmosConfig, batch_size: int, length: int, num_images: int,
                         vision_trainable: str = "all") -> float:
  """Model FLOPs of one training step (forward + backward, no remat), PaLM-style accounting:
  6 x matmul params x tokens plus 12 x layers x width x length x tokens for attention. A frozen
  image encoder costs its forward pass only (2x), apart from trainable last layers."""
  t, v = config.text, config.vision
  tokens = batch_size * length
  text = 6 * (t.num_layers * _matmul_params_per_layer_text(config) + t.vocab_size * t.embed_dim)
  text = text * tokens + 12 * t.num_layers * t.embed_dim * length * tokens
  images = batch_size * num_images
  vt = v.num_positions
  vision_layer = 4 * v.embed_dim ** 2 + 2 * v.embed_dim * v.mlp_dim
  per_layer = vision_layer * vt + 2 * v.embed_dim * vt * vt          # forward multiply-adds
  trainable_layers = {"all": v.num_layers, "last_layer": 1, "none": 0}[vision_trainable]
  vision = images * (2 * per_layer * v.num_layers + 4 * per_layer * trainable_layers)
  d, q = t.embed_dim, config.connector.num_latents
  connector = 6 * images * (v.embed_dim * d * vt + 4 * d * d * q + 2 * q * (vt + q) * d)
  return float(text + vision + connector)


class MetricsLogger:
  """Writes scalars to TensorBoard (clu), the log, and MODEL_DIR/metrics.jsonl (process 0)."""

  def __init__(self, model_dir: str, total_steps: int):
    self.is_chief = jax.process_index() == 0
    self.writer = metric_writers.create_default_writer(model_dir, just_logging=not self.is_chief)
    self.jsonl_path = os.path.join(model_dir, "metrics.jsonl")
    self.total_steps = total_steps
    self.start_time = time.time()
    self.start_step: Optional[int] = None

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    values = {k: float(v) for k, v in scalars.items() if v is not None}
    self.writer.write_scalars(step, {k: v for k, v in values.items() if math.isfinite(v)})
    if self.is_chief:
      record = {"step": step, **{k: (v if math.isfinite(v) else str(v)) for k, v in values.items()}}
      with open(self.jsonl_path, "a") as f:
        f.write(json.dumps(record) + "\n")

  def write_text(self, step: int, texts: Mapping[str, str]) -> None:
    self.writer.write_texts(step, dict(texts))

  def progress(self, step: int, scalars: Mapping[str, Any]) -> str:
    """One line: step/total, loss, throughput, ETA."""
    if self.start_step is None:
      self.start_step, self.start_time = step, time.time()
    elapsed = time.time() - self.start_time
    done = step - self.start_step
    eta = elapsed / done * (self.total_steps - step) if done > 0 else float("nan")
    parts = [f"step {step}/{self.total_steps}"]
    for key, fmt in (("train/loss", "loss {:.4f}"), ("train/accuracy", "acc {:.3f}"),
                     ("train/learning_rate", "lr {:.2e}"), ("train/tokens_per_sec", "{:,.0f} tok/s"),
                     ("train/step_time", "{:.3f} s/step"), ("train/mfu", "MFU {:.1%}")):
      if scalars.get(key) is not None:
        parts.append(fmt.format(float(scalars[key])))
    if math.isfinite(eta):
      parts.append(f"ETA {int(eta // 60)}m{int(eta % 60):02d}s")
    line = " | ".join(parts)
    if self.is_chief:
      print(line, flush=True)   # the progress line is for people: stdout, whatever the log level
    return line

  def flush(self) -> None:
    self.writer.flush()

  def close(self) -> None:
    self.writer.close()
