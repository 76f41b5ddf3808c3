#!/usr/bin/env bash
# N training processes on this machine, each with M virtual CPU devices, joined by
# jax.distributed through a coordinator on 127.0.0.1:PORT: a rehearsal of a multi-host run
# (N hosts x M chips) without a cluster. Waits for all; exits non-zero if any process fails
# (the others are stopped). Process 0 prints to the console, every process logs to
# LOG_DIR/process_<i>.log.
#
#   launch/local_multiprocess.sh [--dry_run] [--num_processes=2] [--devices_per_process=2] \
#       [--port=12355] experiments/shapes_tiny.gin /tmp/shapes_mp --gin.TRAIN_STEPS=3
#
# --dry_run prints the N commands (one per line) and runs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
USAGE="usage: launch/local_multiprocess.sh [--dry_run] [--num_processes=N] \
[--devices_per_process=M] [--port=P] GIN_FILE MODEL_DIR [--gin.NAME=VALUE ...]"
DRY_RUN=0 NUM_PROCESSES=2 DEVICES=2 PORT=12355
while [[ $# -gt 0 && "$1" == --* ]]; do
  case "$1" in
    --dry_run) DRY_RUN=1 ;;
    --num_processes=*) NUM_PROCESSES=${1#*=} ;;
    --devices_per_process=*) DEVICES=${1#*=} ;;
    --port=*) PORT=${1#*=} ;;
    *) echo "error: unknown option $1; $USAGE" >&2; exit 2 ;;
  esac
  shift
done
GIN_FILE=${1:?$USAGE}
MODEL_DIR=${2:?$USAGE}
shift 2
for value in "$NUM_PROCESSES" "$DEVICES" "$PORT"; do
  [[ "$value" =~ ^[1-9][0-9]*$ ]] || { echo "error: '$value' is not a positive integer; $USAGE" >&2; exit 2; }
done
PY=${PYTHON:-.venv/bin/python}
LOG_DIR=${LOG_DIR:-$MODEL_DIR.logs}

EXTRA=("$@")

command_for() {  # CMD = the argv of process $1
  CMD=(env JAX_PLATFORMS=cpu "XLA_FLAGS=--xla_force_host_platform_device_count=$DEVICES"
       "$PY" -m kosmos_jax.train --multiprocess --coordinator_address="127.0.0.1:$PORT"
       --num_processes="$NUM_PROCESSES" --process_id="$1" --gin_file="$GIN_FILE"
       --gin.MODEL_DIR="'$MODEL_DIR'" ${EXTRA[@]+"${EXTRA[@]}"})
}

if [[ $DRY_RUN == 1 ]]; then
  for ((i = 0; i < NUM_PROCESSES; i++)); do
    command_for "$i"
    printf '%q ' "${CMD[@]}"; echo
  done
  exit 0
fi

mkdir -p "$LOG_DIR"
PIDS=()
for ((i = 0; i < NUM_PROCESSES; i++)); do
  command_for "$i"
  if [[ $i == 0 ]]; then
    "${CMD[@]}" > >(tee "$LOG_DIR/process_0.log") 2>&1 &
  else
    "${CMD[@]}" > "$LOG_DIR/process_$i.log" 2>&1 &
  fi
  PIDS+=($!)
done
stop_all() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap stop_all INT TERM
# Poll rather than wait in order: a failed process leaves the others blocked in collectives.
STATUS=0 RUNNING=$NUM_PROCESSES
declare -A DONE=()
while [[ $RUNNING -gt 0 ]]; do
  for ((i = 0; i < NUM_PROCESSES; i++)); do
    [[ -n "${DONE[$i]:-}" ]] && continue
    kill -0 "${PIDS[$i]}" 2>/dev/null && continue
    rc=0; wait "${PIDS[$i]}" || rc=$?
    DONE[$i]=1; RUNNING=$((RUNNING - 1))
    if [[ $rc != 0 && $STATUS == 0 ]]; then
      echo "error: process $i exited with status $rc; stopping the others (log: $LOG_DIR/process_$i.log)" >&2
      tail -n 20 "$LOG_DIR/process_$i.log" >&2 || true
      STATUS=$rc
      stop_all
    fi
  done
  [[ $RUNNING -gt 0 ]] && sleep 1
done
[[ $STATUS == 0 ]] && echo "all $NUM_PROCESSES processes finished; logs in $LOG_DIR"
exit $STATUS
