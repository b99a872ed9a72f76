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
exec jupyter lab --ip=0.0.0.0 --port=8000 --no-browser \
  --ServerApp.root_dir="$PROJECT" --IdentityProvider.token="${JUPYTER_TOKEN}" --PasswordIdentityProvider.hashed_password=''
