"""Hugging Face Kosmos-2 <-> kosmos-jax: configs, weights and the conversion CLI.

Import: a `Kosmos2ForConditionalGeneration` directory (config.json + model.safetensors or a
sharded index) becomes our `kosmos2_hf` preset with the sizes of its config.json, and our params.
Export: our params + config become a directory that `Kosmos2ForConditionalGeneration
.from_pretrained` loads and that gives the same logits. Names and layouts: docs/model.md §11,
`mapping.py` for the tensor transforms.

Command line (absl flags):
  python -m kosmos_jax.convert.hf_kosmos2 --hf_dir=HF --output_dir=CKPT [--scan_layers=false]
      [--allow_pickle] [--param_dtype=bfloat16]
  python -m kosmos_jax.convert.hf_kosmos2 --direction=export --checkpoint_dir=CKPT --output_dir=HF
The import writes the weights-only checkpoint of `kosmos_jax.checkpointing.params_io` (and
copies tokenizer and processor files to CKPT/hf_assets); the export writes config.json, generation_config.json and
safetensors (sharded above --max_shard_bytes), plus the copied assets if the checkpoint has them.

An HF-shaped Python API over the loaded weights is `kosmos_jax.inference.hf_compat`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Mapping, Optional

from absl import app
from absl import flags
import jax
import numpy as np

from kosmos_jax import cli
from kosmos_jax import paths
from kosmos_jax.checkpointing import params_io
from kosmos_jax.convert import hf_clip
from kosmos_jax.convert import mapping
from kosmos_jax.convert import safetensors_io
from kosmos_jax.models import config as config_lib
from kosmos_jax.models import param_layout

MODEL_TYPE = "kosmos-2"
# Kosmos2TextConfig defaults (HF fills fields a config.json leaves out with these).
TEXT_DEFAULTS = {
    "vocab_size": 65037, "max_position_embeddings": 2048, "embed_dim": 2048, "layers": 24,
    "ffn_dim": 8192, "attention_heads": 32, "activation_function": "gelu", "dropout": 0.1,
    "attention_dropout": 0.1, "activation_dropout": 0.0, "layerdrop": 0.0,
    "layer_norm_eps": 1e-5, "scale_embedding": True, "pad_token_id": 1, "bos_token_id": 0,
    "eos_token_id": 2, "add_cross_attention": False,
}
TEXT_ALIASES = {"hidden_size": "embed_dim", "num_hidden_layers": "layers",
                "num_attention_heads": "attention_heads"}
# Kosmos2VisionConfig defaults.
VISION_DEFAULTS = dict(hf_clip.CLIP_VISION_DEFAULTS, hidden_size=1024, intermediate_size=4096,
                       num_hidden_layers=24, num_attention_heads=16, patch_size=14)
LATENT_DEFAULT = 64
# HF text field -> our TextConfig field.
TEXT_FIELDS = {
    "vocab_size": "vocab_size", "embed_dim": "embed_dim", "layers": "num_layers",
    "attention_heads": "num_heads", "ffn_dim": "ffn_dim", "max_position_embeddings": "max_len",
    "dropout": "dropout", "attention_dropout": "attention_dropout",
    "activation_dropout": "activation_dropout", "layer_norm_eps": "layer_norm_eps",
    "pad_token_id": "pad_id", "scale_embedding": "scale_embedding",
}
# Files of a HF directory that are not weights or model config but are needed to use the model.
ASSET_FILES = ("generation_config.json", "preprocessor_config.json", "processor_config.json",
               "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "added_tokens.json", "sentencepiece.bpe.model", "chat_template.json")


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
  """Token ids `generate` needs (Kosmos-2 / fairseq defaults)."""
  bos: int = 0
  eos: int = 2
  pad: int = 1

  def updated(self, generation: Mapping[str, Any]) -> "SpecialTokens":
    """These ids overridden by a generation_config.json dict (HF `generate` reads that file)."""
    eos = generation.get("eos_token_id", self.eos)
    return SpecialTokens(bos=generation.get("bos_token_id", self.bos),
                         eos=eos[0] if isinstance(eos, list) else eos,
                         pad=generation.get("pad_token_id", self.pad))

  def generation_config(self) -> dict[str, Any]:
    return {"bos_token_id": self.bos, "eos_token_id": self.eos, "pad_token_id": self.pad,
            "use_cache": True}


def _text_section(hf: Mapping[str, Any]) -> dict[str, Any]:
  text = dict(hf.get("text_config") or {})
  for alias, name in TEXT_ALIASES.items():
    if alias in text and name not in text:
      text[name] = text.pop(alias)
  # transformers ties lm_head to embed_tokens according to the top-level flag.
  tied = hf.get("tie_word_embeddings", text.get("tie_word_embeddings", True))
  return {key: text.get(key, default) for key, default in TEXT_DEFAULTS.items()} | {
      "tie_word_embeddings": tied}


def config_from_hf(hf: Mapping[str, Any], *, scan_layers: bool = True, dtype: str = "float32",
                   param_dtype: str = "float32", source: str = "config.json"
                   ) -> tuple[config_lib.KosmosConfig, SpecialTokens]:
  """A Kosmos-2 config.json dict -> (our `kosmos2_hf` config with its sizes, special tokens).

  Raises ValueError listing every field whose value kosmos-jax cannot reproduce.
  """
  if hf.get("model_type") != MODEL_TYPE:
    raise ValueError(f"{source} has model_type={hf.get('model_type')!r}; expected {MODEL_TYPE!r} "
                     "(Kosmos2ForConditionalGeneration). For CLIP use kosmos_jax.convert.hf_clip.")
  text = _text_section(hf)
  vision_hf = hf.get("vision_config") or {}
  problems = []
  if text["activation_function"] != "gelu":
    problems.append(f"text_config.activation_function={text['activation_function']!r} "
                    "(only 'gelu' is implemented)")
  if text["add_cross_attention"]:
    problems.append("text_config.add_cross_attention=true (encoder cross-attention is not "
                    "implemented)")
  if text["layerdrop"]:
    problems.append(f"text_config.layerdrop={text['layerdrop']} (LayerDrop is not implemented; "
                    "set it to 0.0)")
  act = vision_hf.get("hidden_act", VISION_DEFAULTS["hidden_act"])
  if act not in hf_clip.SUPPORTED_ACTIVATIONS:
    problems.append(f"vision_config.hidden_act={act!r} "
                    f"(supported: {hf_clip.SUPPORTED_ACTIVATIONS})")
  if problems:
    raise ValueError(f"{source} uses settings kosmos-jax does not support: " + "; ".join(problems))
  base = config_lib.get_config("kosmos2_hf")
  text_cfg = dataclasses.replace(base.text, tie_word_embeddings=bool(text["tie_word_embeddings"]),
                                 **{ours: text[k] for k, ours in TEXT_FIELDS.items()})
  vision_cfg = hf_clip.vision_config_from_hf(vision_hf, VISION_DEFAULTS, base.vision, source)
  connector = dataclasses.replace(base.connector,
                                  num_latents=hf.get("latent_query_num", LATENT_DEFAULT),
                                  num_heads=0, attention_dropout=text["attention_dropout"])
  config = dataclasses.replace(base, text=text_cfg, vision=vision_cfg, connector=connector,
                               scan_layers=scan_layers, dtype=dtype, param_dtype=param_dtype)
  tokens = SpecialTokens(bos=text["bos_token_id"], eos=text["eos_token_id"],
                         pad=text["pad_token_id"])
  return config.validate(), tokens


def exportable_problems(config: config_lib.KosmosConfig) -> list[str]:
  """Settings of `config` that HF Kosmos-2 cannot express (empty if it can)."""
  t, v, c = config.text, config.vision, config.connector
  checks = [
      (t.xpos, "text.xpos=True (HF Kosmos-2 has no relative positions)"),
      (t.abs_pos != "sinusoidal_fairseq",
       f"text.abs_pos={t.abs_pos!r} (HF always adds fairseq sinusoidal positions)"),
      (not t.subln, "text.subln=False (HF hard-wires the Sub-LN layer norms)"),
      (c.kind != "xattn_single", f"connector.kind={c.kind!r} (HF has one cross-attention)"),
      (c.num_heads not in (0, t.num_heads),
       f"connector.num_heads={c.num_heads} (HF uses the text head count, {t.num_heads})"),
      (not c.kv_include_latents, "connector.kv_include_latents=False (HF attends over "
                                 "[image tokens; latents])"),
      (v.feature_layer not in (-1, v.num_layers - 1),
       f"vision.feature_layer={v.feature_layer} (HF uses the last layer)"),
      (not v.post_ln_all_tokens, "vision.post_ln_all_tokens=False"),
      (not v.l2_normalize, "vision.l2_normalize=False"),
      (not v.keep_cls, "vision.keep_cls=False"),
      (v.activation not in hf_clip.SUPPORTED_ACTIVATIONS, f"vision.activation={v.activation!r}"),
  ]
  return [message for failed, message in checks if failed]


def config_to_hf(config: config_lib.KosmosConfig, tokens: SpecialTokens = SpecialTokens()
                 ) -> dict[str, Any]:
  """Our config -> a Kosmos-2 config.json dict; raises ValueError if HF cannot express it.

  Training-only differences are not errors: HF applies embedding dropout twice and uses the
  text attention dropout in the connector; the softmax precision only matters below float32.
  """
  problems = exportable_problems(config)
  if problems:
    raise ValueError("This model cannot be exported to Hugging Face Kosmos-2: "
                     + "; ".join(problems) + ". Only configs of the kosmos2_hf layout export.")
  t = config.text
  text = {hf: getattr(t, ours) for hf, ours in TEXT_FIELDS.items()}
  text.update(model_type="kosmos_2_text_model", activation_function="gelu", layerdrop=0.0,
              add_cross_attention=False, bos_token_id=tokens.bos, eos_token_id=tokens.eos,
              tie_word_embeddings=t.tie_word_embeddings, use_cache=True)
  vision = dict(hf_clip.vision_config_to_hf(config.vision), model_type="kosmos_2_vision_model")
  return {
      "architectures": ["Kosmos2ForConditionalGeneration"], "model_type": MODEL_TYPE,
      "latent_query_num": config.connector.num_latents, "text_config": text,
      "vision_config": vision, "tie_word_embeddings": t.tie_word_embeddings,
      "dtype": config.param_dtype,
  }


def rules(config: config_lib.KosmosConfig) -> list[mapping.Rule]:
  """State_dict name <-> unrolled param path for every tensor of `config`."""
  t = config.text
  out = [mapping.Rule("text_model.model.embed_tokens.weight", "text/embed_tokens/embedding")]
  for i in range(t.num_layers):
    hf, us = f"text_model.model.layers.{i}", f"text/layers_{i}"
    out += mapping.attention(f"{hf}.self_attn", f"{us}/self_attn", t.num_heads, inner_ln=t.subln)
    out += mapping.layer_norm(f"{hf}.self_attn_layer_norm", f"{us}/self_attn_layer_norm")
    out += mapping.dense(f"{hf}.ffn.fc1", f"{us}/ffn/fc1")
    if t.subln:
      out += mapping.layer_norm(f"{hf}.ffn.ffn_layernorm", f"{us}/ffn/ffn_layernorm")
    out += mapping.dense(f"{hf}.ffn.fc2", f"{us}/ffn/fc2")
    out += mapping.layer_norm(f"{hf}.final_layer_norm", f"{us}/final_layer_norm")
  out += mapping.layer_norm("text_model.model.layer_norm", "text/layer_norm")
  if not t.tie_word_embeddings:
    out += mapping.dense("text_model.lm_head", "text/lm_head", bias=False)
  out += hf_clip.vision_rules("vision_model.model.", config.vision)
  p = "image_to_text_projection"
  out += mapping.dense(f"{p}.dense", "connector/dense")
  out.append(mapping.Rule(f"{p}.latent_query", "connector/latent_query"))
  out += mapping.attention(f"{p}.x_attn", "connector/x_attn",
                           config.connector.num_heads or t.num_heads)
  return out


def _is_buffer(name: str) -> bool:
  return hf_clip.is_vision_buffer(name) or name.startswith("text_model.model.embed_positions.")


def params_from_state_dict(state_dict: Mapping[str, np.ndarray], config: config_lib.KosmosConfig,
                           source: str = "Kosmos-2 weights") -> dict:
  """A Kosmos-2 state_dict -> our params in the layout of `config.scan_layers`."""
  tied_head = "text_model.lm_head.weight"
  if config.text.tie_word_embeddings and tied_head in state_dict:
    embed = state_dict.get("text_model.model.embed_tokens.weight")
    if embed is not None and not np.array_equal(state_dict[tied_head], embed):
      raise ValueError(f"{source}: config.json says tie_word_embeddings=true but {tied_head} "
                       "differs from text_model.model.embed_tokens.weight. Set "
                       "tie_word_embeddings=false at the top level of config.json.")
  unrolled = dataclasses.replace(config, scan_layers=False)
  flat = mapping.import_tensors(
      state_dict, rules(unrolled), mapping.flatten(params_io.abstract_params(unrolled)),
      source=source,
      ignore=lambda n: _is_buffer(n) or (config.text.tie_word_embeddings and n == tied_head),
      hint="Check that config.json matches the weights (sizes, layers, heads, latent_query_num).")
  params = mapping.unflatten(flat)
  return param_layout.stack_layers(params) if config.scan_layers else params


def state_dict_from_params(params: Any, config: config_lib.KosmosConfig) -> dict[str, np.ndarray]:
  """Our params (either layer layout) -> a Kosmos-2 state_dict of numpy arrays.

  A tied lm_head is left out, as `save_pretrained` does.
  """
  config_to_hf(config)   # raises for configs HF cannot express
  if param_layout.is_scanned(params):
    params = param_layout.unstack_layers(params)
  unrolled = dataclasses.replace(config, scan_layers=False)
  return mapping.export_tensors(mapping.flatten(params), rules(unrolled))


def load_hf_kosmos2(hf_dir: str, *, scan_layers: bool = True, dtype: str = "float32",
                    param_dtype: str = "float32", allow_pickle: bool = False
                    ) -> tuple[dict, config_lib.KosmosConfig, SpecialTokens]:
  """Reads a HF Kosmos-2 directory -> (params, config, special tokens).

  `dtype` is the activation dtype of the returned config; the weights are cast to `param_dtype`.
  generation_config.json, when present, overrides the special token ids (as HF `generate` does);
  preprocessor_config.json, when present, sets the image mean/std used for uint8 images.
  """
  hf = safetensors_io.read_json(hf_dir)
  config, tokens = config_from_hf(hf, scan_layers=scan_layers, dtype=dtype,
                                  param_dtype=param_dtype, source=f"{hf_dir}/config.json")
  config = dataclasses.replace(config, vision=hf_clip.image_stats(hf_dir, config.vision))
  tokens = tokens.updated(
      safetensors_io.read_json(hf_dir, "generation_config.json", required=False))
  state_dict = safetensors_io.read_state_dict(hf_dir, allow_pickle)
  params = params_from_state_dict(state_dict, config, f"Kosmos-2 weights in {hf_dir}")
  return params, config, tokens


def export_hf_kosmos2(params: Any, config: config_lib.KosmosConfig, output_dir: str, *,
                      tokens: SpecialTokens = SpecialTokens(),
                      max_shard_bytes: Optional[int] = safetensors_io.DEFAULT_MAX_SHARD_BYTES,
                      overwrite: bool = False) -> list[str]:
  """Writes a directory that `Kosmos2ForConditionalGeneration.from_pretrained` loads.

  Tensors keep their dtype (config.json records config.param_dtype). Returns the written files.
  """
  hf_config = config_to_hf(config, tokens)
  tensors = state_dict_from_params(params, config)
  if os.path.exists(os.path.join(output_dir, "config.json")) and not overwrite:
    raise FileExistsError(f"{output_dir} already holds a model (config.json); pass overwrite=True "
                          "(--overwrite) or choose an empty directory.")
  safetensors_io.remove_weight_files(output_dir)   # no stale shards next to the new weights
  written = safetensors_io.write_state_dict(output_dir, tensors, max_shard_bytes)
  _write_json(os.path.join(output_dir, "config.json"), hf_config)
  _write_json(os.path.join(output_dir, "generation_config.json"), tokens.generation_config())
  return written + ["config.json", "generation_config.json"]


def _write_json(path: str, data: Mapping[str, Any]) -> None:
  with open(path, "w") as f:
    json.dump(data, f, indent=2, sort_keys=True)


def copy_assets(src: str, dst: str, skip: tuple[str, ...] = ()) -> list[str]:
  """Copies the tokenizer/processor files of `ASSET_FILES` that `src` has; returns their names."""
  names = [n for n in ASSET_FILES if n not in skip and os.path.isfile(os.path.join(src, n))]
  if names:
    os.makedirs(dst, exist_ok=True)
  for name in names:
    shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
  return names


def checkpoint_tokens(checkpoint_dir: str, config: config_lib.KosmosConfig) -> SpecialTokens:
  """Special tokens of a kosmos-jax checkpoint: hf_assets/generation_config.json if the import
  copied one, else the Kosmos-2 defaults with the config's pad id."""
  assets = os.path.join(checkpoint_dir, params_io.ASSETS_DIR)
  return SpecialTokens(pad=config.text.pad_id).updated(
      safetensors_io.read_json(assets, "generation_config.json", required=False))


# ----------------------------------------------------------------------------- command line


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the converter's flags on `flag_values` (global FLAGS only when run as a script)."""
  fv = flag_values
  flags.DEFINE_enum("direction", "import", ["import", "export"],
                    "import: HF directory -> kosmos-jax checkpoint; export: the reverse.",
                    flag_values=fv)
  flags.DEFINE_string("hf_dir", None, "HF Kosmos-2 directory to import.", flag_values=fv)
  flags.DEFINE_string("checkpoint_dir", None, "kosmos-jax checkpoint to export.", flag_values=fv)
  flags.DEFINE_string("output_dir", None, "Where to write the result.", flag_values=fv)
  flags.DEFINE_bool("scan_layers", True, "Import: store the layers stacked (scanned layout).",
                    flag_values=fv)
  flags.DEFINE_enum("param_dtype", "float32", list(config_lib.DTYPES),
                    "Import: dtype of the stored params.", flag_values=fv)
  flags.DEFINE_bool("allow_pickle", False, "Import: accept pickled pytorch_model.bin weights "
                    "(read with torch.load(weights_only=True)).", flag_values=fv)
  flags.DEFINE_integer("max_shard_bytes", safetensors_io.DEFAULT_MAX_SHARD_BYTES,
                       "Export: shard safetensors files above this size.", flag_values=fv)
  flags.DEFINE_integer("bos_token_id", None, "Export: overrides hf_assets/generation_config.json "
                       "(default 0).", flag_values=fv)
  flags.DEFINE_integer("eos_token_id", None, "Export: overrides hf_assets/generation_config.json "
                       "(default 2).", flag_values=fv)
  flags.DEFINE_bool("overwrite", False, "Replace an existing output.", flag_values=fv)
  flags.mark_flag_as_required("output_dir", flag_values=fv)


def convert(fv: flags.FlagValues) -> str:
  """Runs one conversion described by parsed flags; returns a one-line summary."""
  for name in ("hf_dir", "checkpoint_dir", "output_dir"):
    setattr(fv, name, paths.resolve(getattr(fv, name)))
  if fv.direction == "import":
    if not fv.hf_dir:
      raise app.UsageError("--direction=import needs --hf_dir")
    params, config, tokens = load_hf_kosmos2(fv.hf_dir, scan_layers=fv.scan_layers,
                                             param_dtype=fv.param_dtype,
                                             allow_pickle=fv.allow_pickle)
    params_io.save_params(fv.output_dir, params, config, overwrite=fv.overwrite)
    assets = os.path.join(fv.output_dir, params_io.ASSETS_DIR)
    copied = copy_assets(fv.hf_dir, assets)
    if "generation_config.json" not in copied:
      os.makedirs(assets, exist_ok=True)
      _write_json(os.path.join(assets, "generation_config.json"), tokens.generation_config())
    count = sum(np.size(x) for x in jax.tree_util.tree_leaves(params))
    layout = "scanned" if fv.scan_layers else "unrolled"
    return f"Wrote {count:,} parameters ({layout}) to {fv.output_dir}"
  if not fv.checkpoint_dir:
    raise app.UsageError("--direction=export needs --checkpoint_dir")
  params, config = params_io.load_params(fv.checkpoint_dir)
  tokens = checkpoint_tokens(fv.checkpoint_dir, config)
  tokens = dataclasses.replace(
      tokens, bos=tokens.bos if fv.bos_token_id is None else fv.bos_token_id,
      eos=tokens.eos if fv.eos_token_id is None else fv.eos_token_id)
  files = export_hf_kosmos2(params, config, fv.output_dir, tokens=tokens,
                            max_shard_bytes=fv.max_shard_bytes, overwrite=fv.overwrite)
  files += copy_assets(os.path.join(fv.checkpoint_dir, params_io.ASSETS_DIR), fv.output_dir,
                       skip=("generation_config.json",))
  return f"Wrote {', '.join(files)} to {fv.output_dir}"


def run(argv: list[str]) -> str:
  """The CLI on a private flag set (for tests and other programs): run(["prog", "--hf_dir=..."])."""
  fv = flags.FlagValues()
  define_flags(fv)
  fv(argv)
  return convert(fv)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  print(convert(flags.FLAGS))


if __name__ == "__main__":
  define_flags()
  cli.run(main)
