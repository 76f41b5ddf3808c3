#!/usr/bin/env bash
# The 1.6 B preset's train step on this host's GPUs/TPUs: tokens/s/device, step time, MFU.
# Fresh host: clone the repo, then `bash benchmarks/accelerator.sh` (installs into .venv-accel
# unless KOSMOS_PYTHON names a Python that already has kosmos-jax). `--dry_run` prints the plan.
# Extra arguments go to `python -m benchmarks.run --accelerator`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${KOSMOS_PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ " $* " == *" --dry_run "* ]]; then
    PY="$(command -v python3)"
    [[ -x .venv/bin/python ]] && PY=.venv/bin/python
  else
    if [[ ! -x .venv-accel/bin/python ]]; then
      python3 -m venv .venv-accel
      if command -v nvidia-smi >/dev/null 2>&1; then JAX_EXTRA="jax[cuda12]"; else JAX_EXTRA="jax[tpu]"; fi
      .venv-accel/bin/pip install -q -e . "$JAX_EXTRA"
    fi
    PY=.venv-accel/bin/python
  fi
fi
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}"
exec "$PY" -m benchmarks.run --accelerator "$@"
