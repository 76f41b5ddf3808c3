"""`python -m benchmarks.run`: the report's tables and plot from a result, the accelerator plan
(dry run, no accelerator needed), and the whole `--quick` run end to end (what CI runs)."""
import json
import os
import subprocess
import sys

from PIL import Image
import pytest

from tests.helpers import compile_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, timeout):
  return subprocess.run([sys.executable, "-m", "benchmarks.run", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout,
                        env=compile_env.optimised())   # measures what users' compiles make


def _fake_report():
  train = {"name": "mid (benchmark config)", "dtype": "float32", "params": 10, "batch": 8,
           "length": 256, "ours_tokens_per_sec": 3000.0, "hf_tokens_per_sec": 2000.0,
           "speedup": 1.5, "ours_peak_step_bytes": 2**30, "hf_peak_step_bytes": 2**31,
           "ours_xla_peak_bytes": 2**30, "ours_tflops_per_sec": 0.1, "ours_mfu": None,
           "hf_torch_threads": 1}
  side = {"new_tok_per_s": 100.0, "decode_tok_per_s": 200.0}
  return {"date": "2026-01-01 00:00 UTC", "machine": "test", "command": "python -m benchmarks.run",
          "train": {"fp32": [train, dict(train, name="mid, batch 2", batch=2)], "bf16": []},
          "decode": {"rows": [{"batch": b, "new_tokens": 8, "ours": side,
                               "hf": dict(side, torch_threads=1), "speedup": 1.0,
                               "same_tokens_as_hf": True} for b in (1, 8)]},
          "data": {"available": False, "reason": "ImportError: no"}}


def test_markdown_and_png_from_a_report(tmp_path):
  from benchmarks import run  # pylint: disable=import-outside-toplevel
  report = _fake_report()
  table = run.markdown(report)
  assert "| mid (benchmark config) | float32 | 10 | 8 x 256 | 3,000 | 2,000 | 1.50x | 1,024 | 2,048 |" in table
  assert "| 8 | 8 | 100 | 100 | 1.00x |" in table
  assert "not available (ImportError: no)" in table
  path = str(tmp_path / "run.png")
  run.png(report, path)
  assert Image.open(path).size[0] == 960


def test_accelerator_dry_run_prints_the_plan():
  out = _run(["--accelerator", "--dry_run"], timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  plan = [json.loads(l) for l in out.stdout.splitlines() if l.strip().startswith("{")]
  assert plan and plan[0]["preset"] == "kosmos1" and plan[0]["dtype"] == "bfloat16"
  assert plan[0]["length"] == 2048 and plan[-1]["batch_per_device"] == 1


def test_accelerator_script_dry_run():
  out = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "accelerator.sh"), "--dry_run"],
                       capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, KOSMOS_PYTHON=sys.executable))
  assert out.returncode == 0, out.stderr[-2000:]
  assert "dry run" in out.stdout


def test_quick_run_writes_json_markdown_and_png(tmp_path):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  out = _run(["--quick", f"--out_dir={tmp_path}", "--sections=train,decode,data"], timeout=1500)
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.load(open(tmp_path / "run.json"))
  row = report["train"]["fp32"][0]
  assert row["ours_tokens_per_sec"] > 0 and row["hf_tokens_per_sec"] > 0
  assert row["ours_peak_step_bytes"] and row["hf_peak_step_bytes"]
  assert [r["batch"] for r in report["decode"]["rows"]] == [1, 8]
  assert all(r["same_tokens_as_hf"] for r in report["decode"]["rows"])
  assert "data" in report
  assert "| decode batch |" in open(tmp_path / "run.md").read()
  assert Image.open(tmp_path / "run.png").size[1] > 0
