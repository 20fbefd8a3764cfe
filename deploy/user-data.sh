#!/bin/bash
# shellcheck disable=SC2317,SC2329  # functions that run from traps, which shellcheck cannot see
# ec2-run-supervisor: user data for a training instance (cloud-init runs it once, as root, at
# first boot, and waits for it: it lasts as long as the training does).
#
# 1. Installs the supervisor's instance program (supervisor/instance.py, copied to S3 by you)
#    as /opt/supervisor/instance.py, mode 0755: the SSM document SupervisorInstanceCommand
#    runs it to checkpoint, restore and start training.
# 2. Runs the training command with its pid in PID_FILE (give the run spec the same pid file,
#    so that `checkpoint` can SIGTERM the process) and its output appended to LOG_FILE. While
#    it runs, LOG_FILE is uploaded to TRAINING_LOG under RUN_PREFIX every LOG_UPLOAD_INTERVAL_S
#    seconds when it has grown, and once more at exit: `supervisorctl tail RUN --training`
#    follows that object, with no change to the job.
# 3. On exit, whatever the reason, writes the failure marker FAILED under RUN_PREFIX with the
#    exit code and the last 50 lines of the log, unless a completion marker is already there
#    (or a FAILED the job wrote itself, whose reason is better than ours). The supervisor then
#    records the run as crashed, with that text as the reason. Before FAILED, the last
#    CRASH_LOG_LINES lines of the log go to CRASH_REPORT under RUN_PREFIX (unless the job wrote
#    one), which the supervisor attaches to the crashed run.
#
# Edit the settings below. Each can also be set from the environment, and the training command
# given as arguments (`bash user-data.sh CMD ARG...`), which is how tests run this file.
# Needs the AWS CLI, coreutils, and python3 with boto3 (for instance.py). The instance role
# needs s3:GetObject on SUPERVISOR_INSTANCE_PY and under RUN_PREFIX, and s3:PutObject under
# RUN_PREFIX (deploy/instance-role-policy.json).
set -euo pipefail

# --- settings ------------------------------------------------------------------------------
: "${SUPERVISOR_INSTANCE_PY:=s3://my-training-runs/tools/instance.py}" # copy of supervisor/instance.py
: "${RUN_PREFIX:=s3://my-training-runs/runs/exp1/}" # the run spec's s3_prefix
: "${INSTANCE_PY:=/opt/supervisor/instance.py}"     # where the SSM document expects it
: "${WORK_DIR:=/opt/train}"                         # the training command's working directory
: "${PID_FILE:=/run/train.pid}"
: "${LOG_FILE:=/var/log/train.log}"
: "${TRAINING_LOG:=logs/train.log}" # = supervisorctl tail --training's default key
: "${LOG_UPLOAD_INTERVAL_S:=60}"     # seconds between uploads of a growing LOG_FILE
: "${COMPLETION_MARKERS:=training_complete.txt COMPLETE done}" # = spec.DEFAULT_MARKERS
: "${FAILURE_MARKER:=FAILED}"                                  # = spec.DEFAULT_FAILURE_MARKER
: "${CRASH_REPORT:=crash/error.log}"                           # = the spec's crash_report
: "${CRASH_LOG_LINES:=2000}"
: "${AWS_TIMEOUT_S:=60}" # per AWS CLI call, so a dying network cannot hang the exit
# The training command, one array element per argument: no shell ever re-parses it.
TRAIN_CMD=(python3 train.py --config /opt/train/config.yaml)
if [ "$#" -gt 0 ]; then TRAIN_CMD=("$@"); fi

# --- helpers -------------------------------------------------------------------------------
log() { printf '%s user-data: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }

read -r -a completion_markers <<<"$COMPLETION_MARKERS"
case "$RUN_PREFIX" in
s3://?*) ;;
*)
  log "RUN_PREFIX must look like s3://bucket/prefix/, not '$RUN_PREFIX'"
  exit 2
  ;;
esac
run_location=${RUN_PREFIX#s3://}
run_bucket=${run_location%%/*}
run_keys=${run_location#"$run_bucket"} # the key prefix: empty, or ending in '/'
run_keys=${run_keys#/}
if [ -n "$run_keys" ] && [ "${run_keys%/}" = "$run_keys" ]; then run_keys+=/; fi

# Uploads the first SIZE bytes of LOG_FILE (a consistent snapshot of a file still being
# written) to TRAINING_LOG, unless that size was the last one uploaded. S3 has no append: each
# upload replaces the object, which `tail --training` reads on from where it was.
uploaded_size=-1
upload_log() {
  local size
  if [ ! -f "$LOG_FILE" ]; then return 0; fi
  size=$(wc -c <"$LOG_FILE") || return 0
  if [ "$size" -eq "$uploaded_size" ]; then return 0; fi
  if head -c "$size" -- "$LOG_FILE" |
    timeout "$AWS_TIMEOUT_S" aws s3 cp - "s3://$run_bucket/$run_keys$TRAINING_LOG" >&2; then
    uploaded_size=$size
  else
    log "could not upload $LOG_FILE to $RUN_PREFIX$TRAINING_LOG"
  fi
}

# Runs in the background while training runs. SIGTERM ends it, after an upload in flight (so
# that no older copy can land after the final upload at exit).
log_uploader() {
  local sleeper=""
  trap - EXIT HUP INT
  trap 'if [ -n "$sleeper" ]; then kill "$sleeper" 2>/dev/null; fi; exit 0' TERM
  while :; do
    # Its own output closed, so a sleep outliving this loop holds no pipe of the caller's open.
    sleep "$LOG_UPLOAD_INTERVAL_S" >/dev/null 2>&1 &
    sleeper=$!
    wait "$sleeper" || true
    sleeper=""
    upload_log
  done
}

s3_has() { # does the object NAME exist under the run prefix? (any error counts as no)
  timeout "$AWS_TIMEOUT_S" aws s3api head-object --bucket "$run_bucket" \
    --key "$run_keys$1" >/dev/null 2>&1
}

# --- the exit trap: FAILED unless the job finished ------------------------------------------
stage="before the training command started"
train_pid=""
uploader_pid=""
signals=0
signal_name=""

on_exit() {
  local rc=$? name reason
  set +e # from here on a failing command must not cut the report short
  if [ -n "$uploader_pid" ]; then
    kill -s TERM "$uploader_pid" 2>/dev/null
    wait "$uploader_pid" 2>/dev/null
  fi
  if [ -n "$train_pid" ]; then upload_log; fi
  for name in "${completion_markers[@]}" "$FAILURE_MARKER"; do
    if s3_has "$name"; then
      log "exit code $rc; $RUN_PREFIX$name exists, so no $FAILURE_MARKER is written"
      exit "$rc"
    fi
  done
  reason="exit code $rc $stage"
  if [ "$rc" -gt 128 ]; then reason+=" (killed by SIG$(kill -l "$rc" 2>/dev/null))"; fi
  if [ "$rc" -eq 0 ]; then reason+=", without writing a completion marker"; fi
  if [ -n "$signal_name" ]; then reason+="; user data received SIG$signal_name"; fi
  if [ -s "$LOG_FILE" ] && ! s3_has "$CRASH_REPORT"; then
    if tail -n "$CRASH_LOG_LINES" -- "$LOG_FILE" |
      timeout "$AWS_TIMEOUT_S" aws s3 cp - "s3://$run_bucket/$run_keys$CRASH_REPORT"; then
      log "wrote the log's tail to $RUN_PREFIX$CRASH_REPORT"
    else
      log "could not write $RUN_PREFIX$CRASH_REPORT"
    fi
  fi
  log "$reason: writing $RUN_PREFIX$FAILURE_MARKER"
  if {
    printf '%s\n' "$reason"
    if [ -s "$LOG_FILE" ]; then
      printf -- '--- last 50 lines of %s ---\n' "$LOG_FILE"
      tail -n 50 -- "$LOG_FILE"
    fi
  } | timeout "$AWS_TIMEOUT_S" aws s3 cp - "s3://$run_bucket/$run_keys$FAILURE_MARKER"; then
    log "wrote $RUN_PREFIX$FAILURE_MARKER"
  else
    log "could not write $RUN_PREFIX$FAILURE_MARKER"
  fi
  exit "$rc"
}
trap on_exit EXIT

# SIGTERM (shutdown, spot interruption) and friends: pass them on to the training process and
# let it exit on its own; before it started, just stop.
on_signal() { # NAME NUMBER
  signals=$((signals + 1))
  signal_name=$1
  if [ -z "$train_pid" ]; then exit $((128 + $2)); fi
  log "received SIG$1; passing it on to the training process $train_pid"
  kill -s "$1" "$train_pid" 2>/dev/null || true
}
trap 'on_signal TERM 15' TERM
trap 'on_signal INT 2' INT
trap 'on_signal HUP 1' HUP

# --- 1. the instance program ---------------------------------------------------------------
log "installing $SUPERVISOR_INSTANCE_PY as $INSTANCE_PY"
download=$(mktemp)
timeout "$AWS_TIMEOUT_S" aws s3 cp "$SUPERVISOR_INSTANCE_PY" "$download" >&2
install -D -m 0755 -- "$download" "$INSTANCE_PY"
rm -f -- "$download"
if ! python3 -c 'import boto3' 2>/dev/null; then
  # Bake boto3 into the AMI, or install it here (e.g. `python3 -m pip install boto3`).
  log "WARNING: python3 cannot import boto3; the instance program's S3 commands will fail"
fi

# --- 2. the training command ---------------------------------------------------------------
mkdir -p -- "$WORK_DIR" "$(dirname -- "$PID_FILE")" "$(dirname -- "$LOG_FILE")"
cd -- "$WORK_DIR"
log "starting ${TRAIN_CMD[0]} (${#TRAIN_CMD[@]} words) in $WORK_DIR; output in $LOG_FILE"
stage="from the training command"
# supervisor.report (the job's reporter) writes under the run prefix it finds here.
SUPERVISOR_RUN_PREFIX="$RUN_PREFIX" "${TRAIN_CMD[@]}" >>"$LOG_FILE" 2>&1 </dev/null &
train_pid=$!
printf '%s\n' "$train_pid" >"$PID_FILE.tmp"
mv -f -- "$PID_FILE.tmp" "$PID_FILE"
log_uploader &
uploader_pid=$!

# A trapped signal interrupts `wait`; wait again until the process itself has ended (bash
# keeps its status, so the last `wait` returns the process's own exit code).
while :; do
  seen=$signals
  rc=0
  wait "$train_pid" || rc=$?
  if [ "$seen" -eq "$signals" ]; then break; fi
done
log "training command exited with $rc"
exit "$rc" # -> on_exit
