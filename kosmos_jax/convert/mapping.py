"""Name and layout rules between PyTorch state_dicts and our Flax parameter trees.

A `Rule` ties one state_dict tensor to one Flax parameter (a '/'-joined path in the *unrolled*
layout, `layers_N`) and says how the layout changes:

  kind        PyTorch                Flax                 used for
  copy        any                    same                 embeddings, LayerNorm, plain biases
  linear      weight [out, in]       kernel [in, out]     dense layers
  heads_in    weight [H*hd, in]      kernel [in, H, hd]   q/k/v projections
  heads_bias  bias [H*hd]            bias [H, hd]         q/k/v biases
  heads_out   weight [out, H*hd]     kernel [H, hd, out]  attention output projection
  conv        weight [O, I, kh, kw]  kernel [kh, kw, I, O] patch embedding (NCHW -> NHWC)

Every transform is a transpose and/or reshape, so HF -> ours -> HF is bit-identical.
`import_tensors` / `export_tensors` apply a rule list and report, in one error, every missing,
unknown and mis-shaped tensor.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Mapping, Optional

import jax
import numpy as np

KINDS = ("copy", "linear", "heads_in", "heads_bias", "heads_out", "conv")
_MAX_LISTED = 25


@dataclasses.dataclass(frozen=True)
class Rule:
  hf_name: str       # state_dict key, e.g. "text_model.model.layers.0.self_attn.q_proj.weight"
  path: str          # Flax path, e.g. "text/layers_0/self_attn/q_proj/kernel"
  kind: str = "copy"
  heads: int = 0     # number of heads for the heads_* kinds


def to_flax(rule: Rule, x: np.ndarray) -> np.ndarray:
  """One PyTorch tensor in our layout (see the module docstring)."""
  if rule.kind == "copy":
    return x
  if x.ndim != {"linear": 2, "heads_in": 2, "heads_bias": 1, "heads_out": 2, "conv": 4}[rule.kind]:
    raise ValueError(f"{rule.hf_name} has shape {x.shape}, which is not a {rule.kind} tensor.")
  if rule.kind == "linear":
    return x.T
  if rule.kind == "conv":
    return x.transpose(2, 3, 1, 0)
  if x.shape[0] % rule.heads:
    raise ValueError(f"{rule.hf_name} has {x.shape[0]} rows, not divisible by {rule.heads} heads.")
  if rule.kind == "heads_in":
    return x.T.reshape(x.shape[1], rule.heads, x.shape[0] // rule.heads)
  if rule.kind == "heads_bias":
    return x.reshape(rule.heads, -1)
  return x.T.reshape(rule.heads, x.shape[1] // rule.heads, x.shape[0])       # heads_out


def to_torch(rule: Rule, x: np.ndarray) -> np.ndarray:
  """Inverse of `to_flax`."""
  if rule.kind == "copy":
    return x
  if rule.kind == "linear":
    return x.T
  if rule.kind == "conv":
    return x.transpose(3, 2, 0, 1)
  if rule.kind == "heads_in":
    return x.reshape(x.shape[0], -1).T
  if rule.kind == "heads_bias":
    return x.reshape(-1)
  return x.reshape(-1, x.shape[-1]).T                                           # heads_out


def torch_shape(rule: Rule, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  """The PyTorch shape that maps to `flax_shape` (for error messages)."""
  return to_torch(rule, np.empty(flax_shape, np.int8)).shape


# ----------------------------------------------------------------------------- rule builders


def layer_norm(hf: str, ours: str) -> list[Rule]:
  return [Rule(f"{hf}.weight", f"{ours}/scale"), Rule(f"{hf}.bias", f"{ours}/bias")]


def dense(hf: str, ours: str, bias: bool = True) -> list[Rule]:
  rules = [Rule(f"{hf}.weight", f"{ours}/kernel", "linear")]
  return rules + ([Rule(f"{hf}.bias", f"{ours}/bias")] if bias else [])


def attention(hf: str, ours: str, heads: int, inner_ln: bool = False) -> list[Rule]:
  """q/k/v/out projections (all with biases), optionally the Sub-LN `inner_attn_ln`."""
  rules = []
  for proj in ("q_proj", "k_proj", "v_proj"):
    rules.append(Rule(f"{hf}.{proj}.weight", f"{ours}/{proj}/kernel", "heads_in", heads))
    rules.append(Rule(f"{hf}.{proj}.bias", f"{ours}/{proj}/bias", "heads_bias", heads))
  rules.append(Rule(f"{hf}.out_proj.weight", f"{ours}/out_proj/kernel", "heads_out", heads))
  rules.append(Rule(f"{hf}.out_proj.bias", f"{ours}/out_proj/bias"))
  if inner_ln:
    rules += layer_norm(f"{hf}.inner_attn_ln", f"{ours}/inner_attn_ln")
  return rules


# ----------------------------------------------------------------------------- trees


def flatten(tree: Mapping) -> dict[str, object]:
  """Nested dict -> {'a/b/c': leaf}."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update({f"{key}/{k}": v for k, v in flatten(value).items()})
    else:
      out[str(key)] = value
  return out


def unflatten(flat: Mapping[str, object]) -> dict:
  """{'a/b/c': leaf} -> nested dict."""
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def _listing(items: Iterable[str]) -> str:
  items = list(items)
  shown = ", ".join(items[:_MAX_LISTED])
  return shown + (f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")


def import_tensors(state_dict: Mapping[str, np.ndarray], rules: Iterable[Rule],
                   expected: Mapping[str, jax.ShapeDtypeStruct], *, source: str,
                   ignore: Callable[[str], bool] = lambda name: False,
                   hint: str = "") -> dict[str, np.ndarray]:
  """Applies `rules` to a state_dict; returns {flax path: array} with `expected` shapes/dtypes.

  Raises one ValueError that lists all missing tensors, unknown tensors (neither mapped nor
  ignored) and shape mismatches, with `hint` appended (e.g. which config.json field to check).
  """
  rules = list(rules)
  mapped = {r.hf_name for r in rules}
  problems = []
  missing = [r.hf_name for r in rules if r.hf_name not in state_dict]
  if missing:
    problems.append(f"missing tensors: {_listing(missing)}")
  unknown = sorted(n for n in state_dict if n not in mapped and not ignore(n))
  if unknown:
    problems.append("unknown tensors (no parameter of this config takes them): "
                    + _listing(unknown))
  out = {}
  wrong = []
  for rule in rules:
    if rule.hf_name not in state_dict:
      continue
    if rule.path not in expected:
      raise AssertionError(f"conversion rule targets {rule.path}, which the model does not have")
    want = expected[rule.path]
    x = np.asarray(state_dict[rule.hf_name])
    try:
      y = to_flax(rule, x)
    except ValueError as e:
      wrong.append(str(e))
      continue
    if tuple(y.shape) != tuple(want.shape):
      wrong.append(f"{rule.hf_name} {tuple(x.shape)} (expected {torch_shape(rule, want.shape)} "
                   f"for {rule.path} {tuple(want.shape)})")
      continue
    out[rule.path] = y.astype(want.dtype)
  if wrong:
    problems.append(f"wrong shapes: {_listing(wrong)}")
  if problems:
    raise ValueError(f"Cannot load {source}: " + "; ".join(problems)
                     + (f". {hint}" if hint else ""))
  unmapped = sorted(set(expected) - set(out))
  if unmapped:
    raise AssertionError(f"conversion rules do not cover the parameters {_listing(unmapped)}")
  return out


def export_tensors(flat_params: Mapping[str, object], rules: Iterable[Rule],
                   dtype: Optional[np.dtype] = None) -> dict[str, np.ndarray]:
  """Inverse of `import_tensors`: {flax path: array} -> {state_dict name: numpy array}.

  Every parameter must be taken by exactly one rule, so nothing is silently dropped.
  """
  rules = list(rules)
  paths = {r.path for r in rules}
  left = sorted(set(flat_params) - paths)
  absent = sorted(paths - set(flat_params))
  if left or absent:
    raise ValueError("The parameters do not match the export layout: "
                     + (f"parameters with no Hugging Face name: {_listing(left)}. " if left else "")
                     + (f"parameters missing: {_listing(absent)}." if absent else "")
                     + " Check that the params belong to the given config.")
  out = {}
  for rule in rules:
    x = np.asarray(jax.device_get(flat_params[rule.path]))
    if dtype is not None:
      x = x.astype(dtype)
    out[rule.hf_name] = np.ascontiguousarray(to_torch(rule, x))
  return out
