#!/bin/sh
# JupyterLab on 0.0.0.0:8000, never without a token: $JUPYTER_TOKEN, else a generated one that
# `docker logs kafka` shows. Publish the port on 127.0.0.1 only (see README).
set -eu
if [ -z "${JUPYTER_TOKEN:-}" ]; then
  JUPYTER_TOKEN="$(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
  echo "Generated Jupyter token: ${JUPYTER_TOKEN}"
fi
echo "Open http://127.0.0.1:8000/lab/tree/notebook.ipynb?token=${JUPYTER_TOKEN}"
export JUPYTER_TOKEN
exec jupyter lab --ip=0.0.0.0 --port=8000 --no-browser \
  --ServerApp.root_dir=/app --IdentityProvider.token="${JUPYTER_TOKEN}" --PasswordIdentityProvider.hashed_password=''
