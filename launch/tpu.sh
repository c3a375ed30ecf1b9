#!/usr/bin/env bash
# TPU VM (or pod slice) lifecycle for distilbert-jax: plan, create, set up every worker, run a config
# on all workers, tail the logs, tear down. Every step is one command; --dry-run prints them instead.
#
#   launch/tpu.sh [--dry-run] plan configs/glue.py:sst2 [--config.batch_size=64 ...]   # here, no TPU
#   launch/tpu.sh [--dry-run] create                     # SPOT=1: a spot VM; QUEUED=1: queued resources
#   launch/tpu.sh [--dry-run] setup                      # copy this checkout to every worker, install
#   launch/tpu.sh [--dry-run] run configs/glue.py:sst2 runs/sst2 [--config.lr=3e-5 ...]
#   launch/tpu.sh [--dry-run] tail runs/sst2
#   launch/tpu.sh [--dry-run] delete
#
# Settings (environment): TPU_NAME, ZONE, ACCELERATOR (v4-8, v5litepod-16, ...), RUNTIME (TPU software
# version), PROJECT (optional), BUCKET (a GCS bucket: the workdir is gs://$BUCKET/WORKDIR, shared by
# every worker; orbax writes each process's checkpoint shards there itself, process 0 the metrics
# and results; no gcsfuse). Each worker's log stays on the worker (~/distilbert-jax-logs). `plan` compiles the config for $ACCELERATOR on this machine first
# (distilbert_jax.plan: memory per chip, the mesh that fits, a lower bound on the step time).
# `run` runs the job again whenever it exits with status 75 (a preemption notice: its state was
# saved, and the same command resumes it), and stops at any other status.
set -euo pipefail

TPU_NAME=${TPU_NAME:-distilbert-jax}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR=${ACCELERATOR:-v4-8}
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
BUCKET=${BUCKET:-}
SPOT=${SPOT:-0}
QUEUED=${QUEUED:-0}
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
REMOTE_DIR=distilbert-jax

DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi

run() {  # prints the command; runs it unless --dry-run
  printf '%q ' "$@"; printf '\n'
  if [[ $DRY_RUN -eq 0 ]]; then "$@"; fi
}

tpu() { run gcloud compute tpus tpu-vm "$@" --zone="$ZONE" ${PROJECT_FLAG:+"$PROJECT_FLAG"}; }
on_all() { tpu ssh "$TPU_NAME" --worker=all --command="$1"; }

workdir_for() {  # runs/x -> gs://$BUCKET/runs/x when a bucket is set
  if [[ -n "$BUCKET" ]]; then echo "gs://$BUCKET/$1"; else echo "$1"; fi
}
log_for() {  # each worker's log of run runs/x, on that worker
  echo "\$HOME/distilbert-jax-logs/${1//\//_}.\$(hostname).txt"
}

cmd=${1:-}
shift || true
case "$cmd" in
  plan)
    config=${1:?usage: plan CONFIG [--config.field=value ...]}
    shift
    run python -m distilbert_jax.plan --config="$config" --topology="$ACCELERATOR" "$@"
    ;;
  create)
    spot=()
    if [[ "$SPOT" == 1 ]]; then spot=(--spot); fi
    if [[ "$QUEUED" == 1 ]]; then  # waits in Cloud TPU's queue until the capacity is there
      run gcloud compute tpus queued-resources create "$TPU_NAME" --node-id="$TPU_NAME" \
        --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME" "${spot[@]}" \
        --zone="$ZONE" ${PROJECT_FLAG:+"$PROJECT_FLAG"}
    else
      tpu create "$TPU_NAME" --accelerator-type="$ACCELERATOR" --version="$RUNTIME" "${spot[@]}"
    fi
    ;;
  setup)
    here=$(cd "$(dirname "$0")/.." && pwd)
    archive=/tmp/distilbert-jax.tar.gz
    run tar -czf "$archive" -C "$here" --exclude=.git --exclude='.venv*' --exclude=runs .
    tpu scp "$archive" "$TPU_NAME:/tmp/" --worker=all
    install="mkdir -p $REMOTE_DIR && tar -xzf /tmp/distilbert-jax.tar.gz -C $REMOTE_DIR"
    install+=" && pip install -e './$REMOTE_DIR[tpu,gcs]'"  # jax[tpu] at the pinned version; gs://
    on_all "$install"
    ;;
  run)
    config=${1:?usage: run CONFIG WORKDIR [--config.field=value ...]}
    log=$(log_for "${2:?usage: run CONFIG WORKDIR [--config.field=value ...]}")
    workdir=$(workdir_for "$2")
    shift 2
    extra=""
    if (( $# )); then extra=$(printf '%q ' "$@"); fi
    job="python -m distilbert_jax.main --multihost --config=$config --workdir=$workdir $extra"
    # again while it exits 75 (preempted, state saved); any other status ends the loop
    on_all "cd $REMOTE_DIR && mkdir -p \$HOME/distilbert-jax-logs && nohup bash -c 'while true; do $job; \
status=\$?; [ \$status -eq 75 ] || exit \$status; echo restarting after a preemption; done' \
> $log 2>&1 &"
    ;;
  tail)
    log=$(log_for "${1:?usage: tail WORKDIR}")
    tpu ssh "$TPU_NAME" --worker=0 --command="tail -n 50 -f $log"
    ;;
  delete)
    tpu delete "$TPU_NAME" --quiet
    ;;
  *)
    sed -n '2,18p' "$0"
    exit 2
    ;;
esac
