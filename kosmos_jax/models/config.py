"""Model configuration: frozen dataclasses for the text decoder, vision encoder, connector and the
whole Kosmos model, plus named presets (`kosmos1`, `kosmos2_hf`, `tiny`).

Every difference between Kosmos-1 as described in the paper and the released Kosmos-2 /
Hugging Face layout that changes the forward pass is a field here (docs/model.md §9), so one
code path serves both.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Optional

ABS_POS_KINDS = ("none", "sinusoidal_fairseq")
CONNECTOR_KINDS = ("xattn_single", "perceiver")
VISION_TRAINABLE = ("all", "last_layer", "none")
REMAT_POLICIES = ("none", "full", "minimal", "dots")
DTYPES = ("float32", "bfloat16", "float16")

# OpenAI CLIP normalisation (docs/model.md §5).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class TextConfig:
  """MAGNETO (Sub-LN) causal decoder."""
  vocab_size: int = 64007
  embed_dim: int = 2048
  num_layers: int = 24
  num_heads: int = 32
  ffn_dim: int = 8192
  max_len: int = 2048
  dropout: float = 0.1
  attention_dropout: float = 0.1
  activation_dropout: float = 0.0
  layer_norm_eps: float = 1e-5
  pad_id: int = 1
  # Relative positions: xPos on queries/keys (torchscale semantics).
  xpos: bool = True
  xpos_scale_base: int = 512
  xpos_gamma: float = 0.4
  # Absolute positions added to the embeddings ("sinusoidal_fairseq": padding-aware, offset 2).
  abs_pos: str = "none"
  scale_embedding: bool = True
  subln: bool = True
  # Sub-LN init gain on fc1/fc2/v_proj/out_proj; None derives sqrt(log(2 * num_layers)).
  subln_init_gamma: Optional[float] = None
  tie_word_embeddings: bool = True
  attn_softmax_fp32: bool = True
  # HF Kosmos-2 applies embedding dropout twice in training; fairseq/torchscale once.
  embed_dropout_twice: bool = False

  @property
  def head_dim(self) -> int:
    return self.embed_dim // self.num_heads

  @property
  def init_gamma(self) -> float:
    if not self.subln:
      return 1.0
    if self.subln_init_gamma is not None:
      return self.subln_init_gamma
    return math.sqrt(math.log(2 * self.num_layers))


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """CLIP ViT image encoder (ViT-L/14 at 224 px in the paper)."""
  image_size: int = 224
  patch_size: int = 14
  num_channels: int = 3
  embed_dim: int = 1024
  num_layers: int = 24
  num_heads: int = 16
  mlp_dim: int = 4096
  layer_norm_eps: float = 1e-5
  attention_dropout: float = 0.0
  activation: str = "quick_gelu"
  # Which hidden state feeds the connector (-1: last layer), and how it is prepared.
  feature_layer: int = -1
  post_ln_all_tokens: bool = True
  l2_normalize: bool = True
  keep_cls: bool = True
  image_mean: tuple[float, float, float] = CLIP_MEAN
  image_std: tuple[float, float, float] = CLIP_STD

  @property
  def head_dim(self) -> int:
    return self.embed_dim // self.num_heads

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  @property
  def num_positions(self) -> int:
    return self.num_patches + 1


@dataclasses.dataclass(frozen=True)
class ConnectorConfig:
  """Resampler: learned latent queries attending over image tokens."""
  kind: str = "xattn_single"
  num_latents: int = 64
  # 0 means "use the text decoder's head count".
  num_heads: int = 0
  # Perceiver only: number of (attention + FFN) blocks and FFN width multiplier.
  num_layers: int = 1
  ffn_mult: int = 4
  # Keys/values are [image tokens; latents] (Flamingo/Kosmos-2) rather than image tokens only.
  kv_include_latents: bool = True
  attention_dropout: float = 0.1


@dataclasses.dataclass(frozen=True)
class KosmosConfig:
  """The whole multimodal LM."""
  text: TextConfig = TextConfig()
  vision: VisionConfig = VisionConfig()
  connector: ConnectorConfig = ConnectorConfig()
  dtype: str = "float32"          # activation / matmul dtype
  param_dtype: str = "float32"    # master weights
  scan_layers: bool = True
  # Layers per iteration of the scanned loop. 0 = auto: all of them on CPU (XLA:CPU otherwise
  # zero-fills and copies every stacked per-layer activation, ~1/3 of a small model's step),
  # 1 on accelerators (one compiled layer body, fast compiles). Same params and results.
  scan_unroll: int = 0
  remat_policy: str = "none"
  # Training-time trainability of the image encoder (the paper: all frozen but the last layer).
  vision_trainable: str = "last_layer"

  @property
  def num_image_tokens(self) -> int:
    """Placeholder positions per image in the token sequence (= resampler latents)."""
    return self.connector.num_latents

  def validate(self) -> "KosmosConfig":
    """Raises ValueError naming the field when a combination cannot work."""
    t, v, c = self.text, self.vision, self.connector
    problems = []
    if t.embed_dim % t.num_heads:
      problems.append(f"text.embed_dim={t.embed_dim} is not divisible by text.num_heads={t.num_heads}")
    if t.xpos and t.head_dim % 2:
      problems.append(f"xPos needs an even head_dim, got {t.head_dim}")
    if t.abs_pos not in ABS_POS_KINDS:
      problems.append(f"text.abs_pos={t.abs_pos!r}; choose one of {ABS_POS_KINDS}")
    if v.embed_dim % v.num_heads:
      problems.append(f"vision.embed_dim={v.embed_dim} is not divisible by vision.num_heads={v.num_heads}")
    if v.image_size % v.patch_size:
      problems.append(f"vision.image_size={v.image_size} is not a multiple of vision.patch_size={v.patch_size}")
    if c.kind not in CONNECTOR_KINDS:
      problems.append(f"connector.kind={c.kind!r}; choose one of {CONNECTOR_KINDS}")
    heads = c.num_heads or t.num_heads
    if t.embed_dim % heads:
      problems.append(f"connector heads ({heads}) do not divide text.embed_dim={t.embed_dim}")
    if self.vision_trainable not in VISION_TRAINABLE:
      problems.append(f"vision_trainable={self.vision_trainable!r}; choose one of {VISION_TRAINABLE}")
    if self.scan_unroll < 0:
      problems.append(f"scan_unroll={self.scan_unroll}; use 0 (auto) or a positive count")
    if self.remat_policy not in REMAT_POLICIES:
      problems.append(f"remat_policy={self.remat_policy!r}; choose one of {REMAT_POLICIES}")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in DTYPES:
        problems.append(f"{name}={getattr(self, name)!r}; choose one of {DTYPES}")
    if not -v.num_layers <= v.feature_layer < v.num_layers:
      problems.append(f"vision.feature_layer={v.feature_layer} is outside the {v.num_layers} layers")
    if problems:
      raise ValueError("Invalid KosmosConfig: " + "; ".join(problems))
    return self


def _kosmos1() -> KosmosConfig:
  """The paper model: 24x2048 MAGNETO decoder with xPos, CLIP ViT-L/14 @224, 64 latents."""
  return KosmosConfig()


def _kosmos2_hf() -> KosmosConfig:
  """The released Kosmos-2 checkpoint layout (HF `Kosmos2ForConditionalGeneration`)."""
  return KosmosConfig(
      text=TextConfig(vocab_size=65037, xpos=False, abs_pos="sinusoidal_fairseq",
                      attn_softmax_fp32=False, embed_dropout_twice=True),
      vision_trainable="all")


def _tiny() -> KosmosConfig:
  """Seconds on a CPU: the shapes-world demo and the unit tests."""
  return KosmosConfig(
      text=TextConfig(vocab_size=256, embed_dim=64, num_layers=2, num_heads=4, ffn_dim=256,
                      max_len=256, dropout=0.0, attention_dropout=0.0),
      vision=VisionConfig(image_size=32, patch_size=8, embed_dim=64, num_layers=2, num_heads=4,
                          mlp_dim=256),
      connector=ConnectorConfig(num_latents=8, attention_dropout=0.0),
      vision_trainable="all")


PRESETS: Mapping[str, Callable[[], KosmosConfig]] = {
    "kosmos1": _kosmos1,
    "kosmos2_hf": _kosmos2_hf,
    "tiny": _tiny,
}


def _replace_dotted(config: Any, key: str, value: Any, full_key: str = "") -> Any:
  full_key = full_key or key
  head, _, rest = key.partition(".")
  fields = {f.name for f in dataclasses.fields(config)}
  if head not in fields:
    raise ValueError(f"Unknown config field {full_key!r} ({head!r} is not a field of "
                     f"{type(config).__name__}; known fields: {sorted(fields)})")
  if rest:
    value = _replace_dotted(getattr(config, head), rest, value, full_key)
  return dataclasses.replace(config, **{head: value})


def get_config(name: str = "tiny", overrides: Optional[Mapping[str, Any]] = None) -> KosmosConfig:
  """Returns preset `name` with dotted-key overrides applied, e.g. {"text.num_layers": 4}."""
  if name not in PRESETS:
    raise ValueError(f"Unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
  config = PRESETS[name]()
  for key, value in (overrides or {}).items():
    config = _replace_dotted(config, key, value)
  return config.validate()


def to_dict(config: KosmosConfig) -> dict:
  """A JSON-friendly dict of the config (tuples become lists)."""
  return dataclasses.asdict(config)


def from_dict(data: Mapping[str, Any]) -> KosmosConfig:
  """Inverse of `to_dict`; unknown keys are an error so a stale config file is caught."""
  def build(cls, values):
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(known)
    if unknown:
      raise ValueError(f"Unknown {cls.__name__} fields in saved config: {sorted(unknown)}")
    kwargs = {}
    for key, value in values.items():
      if key in ("image_mean", "image_std"):
        value = tuple(value)
      kwargs[key] = value
    return cls(**kwargs)
  data = dict(data)
  sub = {"text": TextConfig, "vision": VisionConfig, "connector": ConnectorConfig}
  for key, cls in sub.items():
    if key in data:
      data[key] = build(cls, data[key])
  return build(KosmosConfig, data).validate()
