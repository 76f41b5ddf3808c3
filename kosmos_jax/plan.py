"""Memory plan of a training run for a TPU topology or a GPU count, on this CPU host:

  python -m kosmos_jax.plan --gin_file=experiments/kosmos1_pretrain.gin --topology=v5p:4x4x4
  python -m kosmos_jax.plan --gin_file=... --topology=v5e:16x16 --search
  python -m kosmos_jax.plan --gin_file=experiments/shapes_tiny.gin --num_devices=8 --device_kind=H100

Compiles the run's own train step (vision tower, resampler, decoder, optimizer update) for the
devices, allocating nothing, and prints per-device bytes of parameters, optimizer state,
temporaries and the peak against the chip's HBM, the step's FLOPs and a roofline step time. The
last line is one JSON object. `--topology` needs libtpu (`pip install -e '.[tpu]'`); the
planner reads no data, so gin macros left %gin.REQUIRED (MODEL_DIR, task names) get placeholders.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import re
import sys
from typing import Any, Sequence

from absl import flags
import gin
import jax

from kosmos_jax import cli
from kosmos_jax import gin_utils
from kosmos_jax import train as train_lib
from kosmos_jax.planning import hardware
from kosmos_jax.planning import memory
from kosmos_jax.planning import search as search_lib

_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU topology, e.g. v5p:4x4x4, v5e:16x16")
_NUM_DEVICES = flags.DEFINE_integer("num_devices", None,
                                    "compile for N virtual CPU devices (GPU sizing)")
_DEVICE_KIND = flags.DEFINE_enum("device_kind", "H100", list(hardware.GPU_CHIPS),
                                 "the GPU --num_devices sizes for")
_HBM_GIB = flags.DEFINE_float("hbm_gib", None, "HBM per device in GiB (default: the chip's)")
_SEARCH = flags.DEFINE_bool("search", False,
                            "try remat policies x microbatch counts x mesh shapes")
_REMATS = flags.DEFINE_list("remat_policies", ["minimal", "full"], "--search: remat policies")
_MICROBATCHES = flags.DEFINE_list("microbatches", ["1", "2", "4"], "--search: microbatch counts")
_MAX_COMPILES = flags.DEFINE_integer("max_compiles", 8, "--search: at most this many compiles")

PLACEHOLDER = "plan:unset"
_REQUIRED = re.compile(r"gin macro (\w+) is required")
_SETUP_ARGS = ("model", "train_dataset", "mesh", "optimizer", "trainer")


def load_setup(files: Sequence[str], bindings: Sequence[str],
               search_paths: Sequence[str] = ()) -> tuple[memory.Setup, list[str]]:
  """The gin-configured arguments of `train()`, and the required macros given placeholders.

  The mixture is replaced by a placeholder name too: building it would look up the tasks."""
  filled: list[str] = []
  while True:
    gin.clear_config()
    extra = [f"{name}='{PLACEHOLDER}'" for name in filled]
    try:
      gin_utils.parse(files, list(bindings) + extra + [f"MIXTURE_OR_TASK_NAME='{PLACEHOLDER}'"],
                      search_paths)
      break
    except ValueError as e:
      missing = _REQUIRED.match(str(e))
      if not missing or missing.group(1) in filled:
        raise
      filled.append(missing.group(1))
  raw = gin.get_bindings(train_lib.train, resolve_references=False)
  defaults = {k: p.default for k, p in inspect.signature(train_lib.train).parameters.items()}
  values = {}
  for name in _SETUP_ARGS:
    if name not in raw and defaults[name] is inspect.Parameter.empty:
      raise ValueError(f"the gin files bind no train.{name}: plan a training config "
                       "(e.g. experiments/kosmos1_pretrain.gin)")
    values[name] = copy.deepcopy(raw[name]) if name in raw else defaults[name]
  return memory.Setup(values["model"], values["train_dataset"], values["mesh"],
                      values["optimizer"], values["trainer"]), filled


def _devices_and_chip() -> tuple[Sequence[jax.Device], hardware.Chip, str]:
  if bool(_TOPOLOGY.value) == bool(_NUM_DEVICES.value):
    raise ValueError("give exactly one of --topology=CHIP:SHAPE (TPU) or --num_devices=N (GPU)")
  if _TOPOLOGY.value:
    chip = hardware.chip_for_topology(_TOPOLOGY.value)
    return hardware.topology_devices(_TOPOLOGY.value), chip, _TOPOLOGY.value
  if _NUM_DEVICES.value < 1:
    raise ValueError(f"--num_devices={_NUM_DEVICES.value} must be at least 1")
  jax.config.update("jax_num_cpu_devices", _NUM_DEVICES.value)
  chip = hardware.gpu_chip(_DEVICE_KIND.value)
  return hardware.cpu_devices(_NUM_DEVICES.value), chip, f"{_NUM_DEVICES.value} x {chip.name}"


def report_lines(result: dict[str, Any]) -> list[str]:
  """The human-readable plan (the JSON line follows it)."""
  gib = lambda key: (result.get(key) or 0) / 2**30
  verdict = "fits" if result["fits"] else "DOES NOT FIT"
  lines = [
      f"mesh {result['mesh']} rules={result['rules']} remat={result['remat_policy']} "
      f"microbatches={result['num_microbatches']} batch={result['batch_size']} rows "
      f"({result['tokens_per_step']:,} tokens per step)",
      f"per device: parameters {gib('params_bytes'):.2f} GiB, optimizer state "
      f"{gib('optimizer_bytes'):.2f} GiB, temporaries {gib('temp_bytes'):.2f} GiB, "
      f"peak {gib('peak_bytes'):.2f} GiB of {gib('hbm_bytes'):.2f} GiB HBM: {verdict}"]
  if result.get("note"):
    lines.append(f"note: {result['note']}")
  if result.get("flops_per_step"):
    lines.append(
        f"FLOPs per step per device: {result['flops_per_step']:.3g} compiled (XLA cost "
        f"analysis x {result['loop_factor']:.2f} for loop trips) vs "
        f"{result['model_flops_per_step']:.3g} model (training/flops.py, no remat): "
        f"{result['flops_vs_model']:.2f}x")
  if result.get("roofline_step_seconds"):
    lines.append(f"roofline: at least {result['roofline_step_seconds']:.3g} s per step "
                 "(max of FLOPs / peak FLOP/s and HBM bytes / bandwidth)")
  return lines


def main(argv: Sequence[str], bindings: Sequence[str]) -> int:
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}; gin overrides are --gin.NAME=VALUE")
  devices, chip, target = _devices_and_chip()
  setup, filled = load_setup(gin_utils.GIN_FILES.value,
                             list(gin_utils.GIN_BINDINGS.value) + list(bindings),
                             gin_utils.GIN_SEARCH_PATHS.value)
  hbm = _HBM_GIB.value * 2**30 if _HBM_GIB.value else chip.hbm_bytes
  if setup.model.scan_unroll == 0:   # "auto" unrolls on CPU only; the target is an accelerator
    setup = dataclasses.replace(setup, model=dataclasses.replace(setup.model, scan_unroll=1))
  print(f"plan: {' '.join(gin_utils.GIN_FILES.value)} on {target} ({len(devices)} x "
        f"{chip.device_kind}, {hbm / 2**30:.1f} GiB HBM each)")
  if filled:
    print(f"placeholders for unset gin macros (no data is read): {', '.join(filled)}")
  plan_fn = lambda s, precheck=False: memory.plan(s, devices, chip, hbm, precheck=precheck)
  if not _SEARCH.value:
    result = plan_fn(setup)
    print("\n".join(report_lines(result)))
  else:
    result = _search(setup, devices, plan_fn, hbm)
  print(json.dumps(result, sort_keys=True))
  return 0


def _search(setup: memory.Setup, devices, plan_fn, hbm: float) -> dict[str, Any]:
  """Runs the search; the best plan, with every tried plan under "search"."""
  for name in _REMATS.value:
    if name not in search_lib.REMAT_ORDER:
      raise ValueError(f"--remat_policies: {name!r}; choose from {list(search_lib.REMAT_ORDER)}")
  try:
    counts = [int(k) for k in _MICROBATCHES.value]
  except ValueError as e:
    raise ValueError(f"--microbatches={_MICROBATCHES.value}: give integers") from e
  shapes = search_lib.mesh_shapes(len(devices), memory.Candidate.of(setup),
                                  setup.dataset.batch_size)
  print(f"search: remat {_REMATS.value} x microbatches {counts} x {len(shapes)} mesh shapes")
  results = search_lib.search(setup, lambda s: plan_fn(s, precheck=True), _REMATS.value, counts,
                              shapes, hbm, _MAX_COMPILES.value)
  if not results:
    raise ValueError("no candidate splits the batch: change BATCH_SIZE or --microbatches")
  print("\n".join(search_lib.summary_lines(results)))
  best = results[0]
  if "skipped" in best:     # nothing was compiled: the JSON line still has every key
    best = {"devices": len(devices), "device_kind": "", "params_bytes": None,
            "optimizer_bytes": None, "temp_bytes": None, "hbm_bytes": hbm,
            "flops_per_step": None} | best
  else:
    print("best:")
    print("\n".join(report_lines(best)))
  short = ("remat_policy", "num_microbatches", "mesh", "rules", "peak_bytes", "fits",
           "roofline_step_seconds", "flops_per_step", "skipped")
  return best | {"search": [{k: r[k] for k in short if k in r} for r in results]}


if __name__ == "__main__":
  flags.adopt_module_key_flags(gin_utils)
  try:
    _ARGV, _BINDINGS = gin_utils.split_gin_overrides(sys.argv)
  except ValueError as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(cli.USER_ERROR_EXIT)
  cli.run(lambda argv: main(argv, _BINDINGS), argv=_ARGV)
