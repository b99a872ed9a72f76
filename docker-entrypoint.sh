#!/bin/sh
# JupyterLab on 0.0.0.0:8000, never without a token: $JUPYTER_TOKEN, else a generated one that
# `docker logs kafka` shows. Publish the port on 127.0.0.1 only (see README).
# Jupyter's root is the project folder (the /project volume): the outputs, the continuation and
# the scoreboard open from it, and the user's copy of the notebook lives there, so that edits
# survive a new container. The code stays in /app, read-only.
set -eu
APP_DIR="$(cd "$(dirname "$0")" && pwd)"
PROJECT="${KAFKA_PROJECT_DIR:-/project}"
if [ ! -e "$PROJECT/notebook.ipynb" ]; then
  cp "$APP_DIR/notebook.ipynb" "$PROJECT/notebook.ipynb"
  echo "notebook.ipynb copied to $PROJECT (your copy: edits there survive the container)"
fi
if [ -z "${JUPYTER_TOKEN:-}" ]; then
  JUPYTER_TOKEN="$(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
  echo "Generated Jupyter token: ${JUPYTER_TOKEN}"
fi
echo "Open http://127.0.0.1:8000/lab/tree/notebook.ipynb?token=${JUPYTER_TOKEN}"
export JUPYTER_TOKEN
python -m chateau.doctor --quick || true &  # what this machine can do per stage, in `docker logs`; beside Jupyter's start, never delaying `docker stop`

# `docker stop` sends SIGTERM to this process (PID 1) only, and SIGKILLs every process of the
# container when PID 1 exits or the grace period ends. So PID 1 forwards the signal to the running
# steps (`docker exec ... python 2a_...py`, torchrun's workers included), which save a checkpoint
# and stop, and waits for them. Give them the time: `docker stop -t 120 kafka` (README, Hardware).
# A step is a numbered script's process whose environment names this project (every `docker exec`
# inherits the image's KAFKA_PROJECT_DIR): outside a container, the steps of other projects on the
# same machine are not this entrypoint's to stop.
STEP='[0-9][a-z]?_(prepare|train|continue|export)_[A-Za-z_]*[.]py'
step_pids() {
  for cmdline in /proc/[0-9]*/cmdline; do
    dir=${cmdline%/cmdline}
    if tr '\0' ' ' < "$cmdline" 2>/dev/null | grep -qE "$STEP" &&
       tr '\0' '\n' < "$dir/environ" 2>/dev/null | grep -qxF "KAFKA_PROJECT_DIR=$PROJECT"; then
      echo "${dir#/proc/}"
    fi
  done
}
stop() {
  pids=$(step_pids)
  if [ -n "$pids" ]; then
    echo "docker stop: asking the running steps ($(echo $pids)) to save a checkpoint and stop"
    kill -TERM $pids 2>/dev/null || true
    while [ -n "$(step_pids)" ]; do sleep 1; done
    echo "docker stop: the steps have stopped"
  fi
  kill -TERM "$JUPYTER" 2>/dev/null || true
  wait "$JUPYTER" 2>/dev/null || true
  exit 143
}
trap stop TERM INT
jupyter lab --ip=0.0.0.0 --port=8000 --no-browser \
  --ServerApp.root_dir="$PROJECT" --IdentityProvider.token="${JUPYTER_TOKEN}" --PasswordIdentityProvider.hashed_password='' &
JUPYTER=$!
wait "$JUPYTER"
