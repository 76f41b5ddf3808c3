"""Where training metrics go: TensorBoard and the log through clu metric writers, plus
`metrics.jsonl` (one JSON object per logged step, with `step`) so runs can be compared by
scripts; and the progress line with ETA."""
from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any, Mapping, Optional

from clu import metric_writers
import jax

from kosmos_jax.checkpointing import run_dir

# data/* counters of records that were kept (cut to the row length), not skipped.
_KEPT_RECORD_TALLIES = ("data/truncated_to_row_length",)


class MetricsLogger:
  """Writes scalars to TensorBoard (clu), the log, and MODEL_DIR/metrics.jsonl (process 0)."""

  def __init__(self, model_dir: str, total_steps: int):
    self.is_chief = jax.process_index() == 0
    self.writer = metric_writers.create_default_writer(model_dir, just_logging=not self.is_chief)
    self.jsonl_path = os.path.join(model_dir, run_dir.METRICS)
    self.total_steps = total_steps
    self.start_time = time.time()
    self.start_step: Optional[int] = None
    self.reported_skips: set[str] = set()   # skip reasons already named in the log

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    values = {k: float(v) for k, v in scalars.items() if v is not None}
    self.writer.write_scalars(step, {k: v for k, v in values.items() if math.isfinite(v)})
    if self.is_chief:
      record = {"step": step, **{k: (v if math.isfinite(v) else str(v)) for k, v in values.items()}}
      with open(self.jsonl_path, "a") as f:
        f.write(json.dumps(record) + "\n")

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
    skipped = {k[len("data/"):]: int(v) for k, v in scalars.items()
               if k.startswith("data/") and k not in _KEPT_RECORD_TALLIES and v}
    if skipped:
      parts.append(f"skipped {sum(skipped.values()):,} records")
      new = sorted(set(skipped) - self.reported_skips)
      if new and self.is_chief:
        logging.warning("data: records skipped as %s (counts by reason in the data/* metrics)",
                        ", ".join(f"{r} ({skipped[r]:,})" for r in new))
      self.reported_skips.update(new)
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
