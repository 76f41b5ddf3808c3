"""All benchmarks in one run, ours and the Hugging Face PyTorch reference side by side.

  python -m benchmarks.run [--quick] [--out_dir=benchmarks/results]
  python -m benchmarks.run --accelerator [--dry_run]        # GPU/TPU host: the 1.6 B preset

Sections (each a function of `benchmarks.train_step` / `benchmarks.decode`, nothing redefined):
  train     AdamW train-step tokens/s, ratio to HF, peak step memory of each side, TFLOP/s and
            MFU (when the device's peak is known), on the benchmark config, on shapes that were
            not tuned for (other widths, depths, batch x length), and a batch sweep; bf16
            reported separately from the fp32 ratios.
  decode    greedy new tokens/s at batch 1 and 8 vs HF `generate` (same tokens checked).
  data      the data pipeline's examples/s vs what the train step consumes
            (`benchmarks.data_pipeline.demo_consumption`; "not available" if it cannot run).
Writes `run.json`, `run.md` (Markdown tables) and `run.png` (throughput vs batch size) under
--out_dir. `--quick` (a few minutes on 2 cores, a CI smoke test, not a measurement) runs the
benchmark config once per side and a short decode.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import time
import traceback

from absl import app
from absl import flags
import jax

from benchmarks import decode as decode_bench
from benchmarks import plot
from benchmarks import train_step

_QUICK = flags.DEFINE_bool("quick", False, "small run (CI smoke test, a few minutes)")
_OUT_DIR = flags.DEFINE_string("out_dir", os.path.join(os.path.dirname(__file__), "results"),
                               "where run.json / run.md / run.png go")
_SECTIONS = flags.DEFINE_list("sections", ["train", "decode", "data"], "sections to run")
_ACCEL = flags.DEFINE_bool("accelerator", False, "measure the 1.6 B preset on this host's chips")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "with --accelerator: print the plan, run nothing")
_PRESET = flags.DEFINE_string("preset", "kosmos1", "--accelerator: model preset")

M = train_step.MID
# Shapes other than the benchmark config (name, overrides, batch, length): other widths and
# depths of both towers, other batch x length, other head counts and patch sizes.
UNTUNED = [
    ("narrow-deep text 8x192, ViT 6x192", {**M, "text.embed_dim": 192, "text.num_layers": 8,
                                          "text.num_heads": 3, "text.ffn_dim": 768,
                                          "vision.embed_dim": 192, "vision.num_layers": 6,
                                          "vision.num_heads": 3, "vision.mlp_dim": 768}, 8, 256),
    ("wide text 2x512, ViT 2x384 /16", {**M, "text.embed_dim": 512, "text.num_layers": 2,
                                        "text.num_heads": 8, "text.ffn_dim": 2048,
                                        "vision.embed_dim": 384, "vision.num_layers": 2,
                                        "vision.num_heads": 6, "vision.mlp_dim": 1536,
                                        "vision.patch_size": 16}, 4, 256),
    ("mid, long rows 4x512", M, 4, 512),
    ("mid, short rows 16x128", M, 16, 128),
]


def _compare(*args, **kwargs) -> dict:
  """`train_step.compare`, each row also printed when done (a cut-short run keeps its rows)."""
  row = train_step.compare(*args, **kwargs)
  print("train row: " + json.dumps(row), file=sys.stderr, flush=True)
  return row


def train_section(quick: bool) -> dict:
  """fp32 ratios on the benchmark config, untuned shapes and a batch sweep; bf16 apart.
  `quick`: the benchmark config only, one process pair, HF at all cores (a CI smoke test)."""
  if quick:
    return {"fp32": [_compare("mid (benchmark config)", M, 8, 256, steps=2, warmup=1, rounds=1,
                              hf_threads=[os.cpu_count() or 1])], "bf16": []}
  steps = 6
  rows = [_compare("mid (benchmark config)", M, 8, 256, steps=steps)]
  for b in [2, 4, 16]:
    rows.append(_compare(f"mid, batch {b}", M, b, 256, steps=steps, memory=False))
  rows += [_compare(name, o, b, n, steps=steps) for name, o, b, n in UNTUNED]
  bf16 = [_compare("mid (benchmark config)", M, 8, 256, steps=steps, dtype="bfloat16",
                   memory=False)]
  return {"fp32": rows, "bf16": bf16}


def decode_section(quick: bool) -> dict:
  new, repeats, warmup, rounds = (8, 3, 1, 1) if quick else (32, 5, 2, 2)
  threads = [os.cpu_count()] if quick else [1, os.cpu_count()]
  rows, _ = decode_bench.measure([1, 8], new, warmup, repeats, sorted(set(threads)),
                                 rounds=rounds)
  return {"config": decode_bench.HF_CONFIG, "rows": rows}


def data_section() -> dict:
  """The data pipeline vs the train step's consumption, if `benchmarks.data_pipeline` runs."""
  try:
    from benchmarks import data_pipeline  # pylint: disable=g-import-not-at-top
    return {"available": True, **data_pipeline.demo_consumption()}
  except Exception as e:  # pylint: disable=broad-except  (an optional section)
    return {"available": False, "reason": f"{type(e).__name__}: {e}".splitlines()[0][:300]}


def _mib(x):
  return "—" if x is None else f"{x / 2**20:,.0f}"


def _ratio(x):
  return "—" if x is None else f"{x:.2f}x"


def markdown(report: dict) -> str:
  """The report's tables (README-ready)."""
  lines = [f"Run {report['date']} on {report['machine']}; `{report['command']}`.", ""]
  train = report.get("train")
  if train:
    lines += ["| shape | dtype | params | batch x length | ours tok/s | HF tok/s | ours / HF | "
              "ours peak MiB (XLA) | HF peak MiB (RSS) | TFLOP/s | MFU | HF threads |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in train["fp32"] + train["bf16"]:
      mfu = "—" if r.get("ours_mfu") is None else f"{100 * r['ours_mfu']:.1f}%"
      lines.append(
          f"| {r['name']} | {r['dtype']} | {r['params']:,} | {r['batch']} x {r['length']} | "
          f"{r['ours_tokens_per_sec']:,.0f} | {r.get('hf_tokens_per_sec', 0):,.0f} | "
          f"{_ratio(r.get('speedup'))} | {_mib(r.get('ours_xla_peak_bytes'))} | "
          f"{_mib(r.get('hf_peak_step_bytes'))} | "
          f"{r['ours_tflops_per_sec']:.3f} | {mfu} | {r.get('hf_torch_threads', '—')} |")
    lines.append("")
  dec = report.get("decode")
  if dec:
    lines += ["| decode batch | new tokens | ours new tok/s | HF new tok/s | ours / HF | "
              "ours decode-only tok/s | HF decode-only tok/s | HF threads | same tokens |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in dec["rows"]:
      o, h = r["ours"], r["hf"]
      lines.append(f"| {r['batch']} | {r['new_tokens']} | {o['new_tok_per_s']:,.0f} | "
                   f"{h['new_tok_per_s']:,.0f} | {r['speedup']:.2f}x | "
                   f"{o['decode_tok_per_s']:,.0f} | {h['decode_tok_per_s']:,.0f} | "
                   f"{h['torch_threads']} | {r['same_tokens_as_hf']} |")
    lines.append("")
  data = report.get("data")
  if data is not None:
    if data.get("available"):
      lines.append("Data pipeline: " + ", ".join(
          f"{k} {v:,.2f}" for k, v in data.items() if isinstance(v, float)))
    else:
      lines.append(f"Data pipeline vs train step: not available ({data.get('reason')}).")
  return "\n".join(lines) + "\n"


def png(report: dict, path: str) -> None:
  panels = []
  train = report.get("train")
  if train:
    sweep = [r for r in train["fp32"] if r["name"].startswith("mid") and r["length"] == 256]
    panels.append({"title": "train step, mid config, 256 tokens/row (fp32)", "series": {
        "kosmos-jax": [(r["batch"], r["ours_tokens_per_sec"]) for r in sweep],
        "HF torch": [(r["batch"], r["hf_tokens_per_sec"]) for r in sweep if "hf_tokens_per_sec" in r]}})
  if report.get("decode"):
    rows = report["decode"]["rows"]
    panels.append({"title": "greedy decode (prefill + new tokens)", "ylabel": "new tokens/s",
                   "series": {"kosmos-jax": [(r["batch"], r["ours"]["new_tok_per_s"]) for r in rows],
                              "HF generate": [(r["batch"], r["hf"]["new_tok_per_s"]) for r in rows]}})
  plot.save(path, panels, f"{report['machine']}, {report['date']}")  # ASCII: PIL's default font


def machine() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  device = jax.devices()[0]
  kind = "CPU" if device.platform == "cpu" else device.device_kind
  return f"{os.cpu_count()} cores of {cpu}, {kind} backend" if kind == "CPU" else kind


def _commit() -> str:
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=os.path.dirname(__file__), check=True).stdout.strip()
  except (subprocess.SubprocessError, OSError):
    return "unknown"


def main(argv):
  del argv
  if _ACCEL.value:
    from benchmarks import accelerator  # pylint: disable=g-import-not-at-top
    accelerator.main(_PRESET.value, _OUT_DIR.value, dry_run=_DRY_RUN.value)
    return
  quick = _QUICK.value
  report = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(), "commit": _commit(), "quick": quick,
            "command": "python -m benchmarks.run" + (" --quick" if quick else ""),
            "versions": {"jax": jax.__version__, "python": platform.python_version()}}
  sections = {"train": lambda: train_section(quick), "decode": lambda: decode_section(quick),
              "data": data_section}
  for name in _SECTIONS.value:
    start = time.perf_counter()
    try:
      report[name] = sections[name]()
    except ImportError as e:   # e.g. torch / transformers missing: report, keep going
      traceback.print_exc()
      report[name + "_error"] = str(e)
    print(f"[{name}: {time.perf_counter() - start:.0f} s]", file=sys.stderr)
  os.makedirs(_OUT_DIR.value, exist_ok=True)
  with open(os.path.join(_OUT_DIR.value, "run.json"), "w") as f:
    json.dump(report, f, indent=1)
  table = markdown(report)
  with open(os.path.join(_OUT_DIR.value, "run.md"), "w") as f:
    f.write(table)
  png(report, os.path.join(_OUT_DIR.value, "run.png"))
  print(table)


if __name__ == "__main__":
  app.run(main)
