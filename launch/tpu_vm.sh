#!/usr/bin/env bash
# Train on a Cloud TPU VM slice (single- or multi-host): copies the repo to every worker,
# installs, and starts the same command on all hosts (jax.distributed.initialize() needs no
# arguments on TPU). MODEL_DIR must be a gs:// path every host can write.
#
#   TPU_NAME=my-v5p-64 ZONE=us-east5-a launch/tpu_vm.sh experiments/kosmos1_pretrain.gin \
#       gs://my-bucket/kosmos1 --gin.TEXT_TASK="'my_text'" ...
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
GIN_FILE=${1:?usage: tpu_vm.sh GIN_FILE MODEL_DIR [--gin.NAME=VALUE ...]}
MODEL_DIR=${2:?usage: tpu_vm.sh GIN_FILE MODEL_DIR [--gin.NAME=VALUE ...]}
shift 2
REPO=$(cd "$(dirname "$0")/.." && pwd)
REMOTE_DIR=${REMOTE_DIR:-kosmos_jax}
EXTRA=$(printf "%q " "$@")

gcloud compute tpus tpu-vm scp --recurse "$REPO" "$TPU_NAME:~/$REMOTE_DIR" \
  --zone="$ZONE" --worker=all
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command "
  set -e
  cd ~/$REMOTE_DIR
  python3 -m venv .venv && .venv/bin/pip install -q -U pip
  .venv/bin/pip install -q -e . 'jax[tpu]>=0.10.2,<0.11'
  .venv/bin/python -m kosmos_jax.train --multiprocess --gin_file=$GIN_FILE \
      --gin.MODEL_DIR=\"'$MODEL_DIR'\" $EXTRA 2>&1 | tee ~/train.log
"
