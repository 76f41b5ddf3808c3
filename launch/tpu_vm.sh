#!/usr/bin/env bash
# Train on a Cloud TPU VM slice, single- or multi-host. Creates the VM (or a queued resource)
# when asked, copies this checkout to every worker, installs it with the TPU extra, starts the
# same gin-configured command on --worker=all (jax.distributed.initialize() auto-detects the
# pod), streams worker 0's log, and deletes the slice when asked. MODEL_DIR must be a gs://
# path every host can write. Plan the memory first: python -m kosmos_jax.plan --topology=...
#
#   TPU_NAME=k1 ZONE=us-east5-a ACCELERATOR_TYPE=v5p-64 launch/tpu_vm.sh --create --delete \
#       experiments/kosmos1_pretrain.gin gs://my-bucket/kosmos1 --gin.TEXT_TASK="'my_text'" ...
#
# Options (before GIN_FILE):
#   --create    create the TPU VM first (ACCELERATOR_TYPE, RUNTIME_VERSION); else reuse TPU_NAME
#   --queued    with --create: a queued resource (waits until ACTIVE; spot/reserved capacity)
#   --delete    delete the VM / queued resource when training ends
#   --dry_run   print every command (one per line) and run nothing; needs no gcloud
# Environment: TPU_NAME, ZONE (required); PROJECT; ACCELERATOR_TYPE (v5p-64);
#   RUNTIME_VERSION (v2-alpha-tpuv5); REMOTE_DIR (kosmos_jax); QUEUED_FLAGS (e.g. --spot).
set -euo pipefail
USAGE="usage: launch/tpu_vm.sh [--create [--queued]] [--delete] [--dry_run] GIN_FILE MODEL_DIR \
[--gin.NAME=VALUE ...]"
CREATE=0 QUEUED=0 DELETE=0 DRY_RUN=0
while [[ $# -gt 0 && "$1" == --* && "$1" != --gin* ]]; do
  case "$1" in
    --create) CREATE=1 ;;
    --queued) QUEUED=1 ;;
    --delete) DELETE=1 ;;
    --dry_run) DRY_RUN=1 ;;
    *) echo "error: unknown option $1; $USAGE" >&2; exit 2 ;;
  esac
  shift
done
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
GIN_FILE=${1:?$USAGE}
MODEL_DIR=${2:?$USAGE}
shift 2
if [[ $QUEUED == 1 && $CREATE == 0 ]]; then
  echo "error: --queued creates a queued resource; pass --create with it" >&2; exit 2
fi
REPO=$(cd "$(dirname "$0")/.." && pwd)
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v5p-64}
RUNTIME_VERSION=${RUNTIME_VERSION:-v2-alpha-tpuv5}
REMOTE_DIR=${REMOTE_DIR:-kosmos_jax}
TARBALL=${TARBALL:-/tmp/kosmos_jax_$TPU_NAME.tar.gz}
GCLOUD=(gcloud compute tpus)
WHERE=(--zone="$ZONE")
[[ -n "${PROJECT:-}" ]] && WHERE+=(--project="$PROJECT")
LOG=train.log

run() {  # prints (dry run) or runs one command
  if [[ $DRY_RUN == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

# The training command every worker runs (the same on all hosts).
TRAIN=(.venv/bin/python -m kosmos_jax.train --multiprocess --gin_file="$GIN_FILE"
       --gin.MODEL_DIR="'$MODEL_DIR'" "$@")
TRAIN_Q=$(printf '%q ' "${TRAIN[@]}")
REMOTE="set -e; mkdir -p ~/$REMOTE_DIR; tar -xzf ~/kosmos_jax.tar.gz -C ~/$REMOTE_DIR; \
cd ~/$REMOTE_DIR; [ -x .venv/bin/python ] || python3 -m venv .venv; \
.venv/bin/pip install -q -U pip; .venv/bin/pip install -q -e '.[tpu]'; \
rm -f ~/train.rc; (nohup $TRAIN_Q > ~/$LOG 2>&1; echo \$? > ~/train.rc) > /dev/null 2>&1 &"
FOLLOW="tail -n +1 -F ~/$LOG & t=\$!; while [ ! -f ~/train.rc ]; do sleep 15; done; \
sleep 2; kill \$t; exit \$(cat ~/train.rc)"

if [[ $CREATE == 1 && $QUEUED == 1 ]]; then
  run "${GCLOUD[@]}" queued-resources create "$TPU_NAME" --node-id="$TPU_NAME" "${WHERE[@]}" \
    --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION" ${QUEUED_FLAGS:-}
  if [[ $DRY_RUN == 0 ]]; then
    until [[ "$("${GCLOUD[@]}" queued-resources describe "$TPU_NAME" "${WHERE[@]}" \
                --format='value(state.state)')" == ACTIVE ]]; do sleep 60; done
  else
    echo "# until state.state == ACTIVE, every 60 s:"
    run "${GCLOUD[@]}" queued-resources describe "$TPU_NAME" "${WHERE[@]}" \
      --format='value(state.state)'
  fi
elif [[ $CREATE == 1 ]]; then
  run "${GCLOUD[@]}" tpu-vm create "$TPU_NAME" "${WHERE[@]}" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION"
fi
run tar -czf "$TARBALL" --exclude=.git --exclude=.venv --exclude=__pycache__ -C "$REPO" .
run "${GCLOUD[@]}" tpu-vm scp "$TARBALL" "$TPU_NAME:~/kosmos_jax.tar.gz" "${WHERE[@]}" --worker=all
run "${GCLOUD[@]}" tpu-vm ssh "$TPU_NAME" "${WHERE[@]}" --worker=all --command "$REMOTE"
STATUS=0
run "${GCLOUD[@]}" tpu-vm ssh "$TPU_NAME" "${WHERE[@]}" --worker=0 --command "$FOLLOW" || STATUS=$?
if [[ $DELETE == 1 ]]; then
  if [[ $QUEUED == 1 ]]; then
    run "${GCLOUD[@]}" queued-resources delete "$TPU_NAME" "${WHERE[@]}" --force --quiet
  else
    run "${GCLOUD[@]}" tpu-vm delete "$TPU_NAME" "${WHERE[@]}" --quiet
  fi
fi
exit $STATUS
