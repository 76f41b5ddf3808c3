#!/usr/bin/env bash
# Train on this machine (CPU or local GPUs/TPU):
#   launch/local.sh experiments/shapes_tiny.gin /tmp/shapes [--gin.TRAIN_STEPS=100 ...]
set -euo pipefail
cd "$(dirname "$0")/.."
GIN_FILE=${1:?usage: launch/local.sh GIN_FILE MODEL_DIR [--gin.NAME=VALUE ...]}
MODEL_DIR=${2:?usage: launch/local.sh GIN_FILE MODEL_DIR [--gin.NAME=VALUE ...]}
shift 2
PY=${PYTHON:-.venv/bin/python}
exec "$PY" -m kosmos_jax.train --gin_file="$GIN_FILE" --gin.MODEL_DIR="'$MODEL_DIR'" "$@"
