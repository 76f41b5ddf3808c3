"""Model FLOPs of a training step and the peak FLOP/s of known accelerators, for MFU."""
from __future__ import annotations

from typing import Optional

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
