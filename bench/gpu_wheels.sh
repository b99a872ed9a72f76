#!/usr/bin/env bash
# The wheels the GPU benchmark needs beyond what the lent GPU machine's image has (torch,
# transformers, peft, accelerate, tensorboard, pyarrow), gathered here into one folder, so the
# one timed command on the GPU installs them offline:
#   bash bench/gpu_wheels.sh .whl                       # for the lent machine: Python 3.12, manylinux x86_64
#   PYVER=3.11 bash bench/gpu_wheels.sh /tmp/whl        # for the rehearsal here (this machine's Python)
# Pins come from requirements.txt (one place); liger-kernel is a lever the benchmark measures.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${1:-.whl}"
PYVER="${PYVER:-3.12}"
pin() { grep -E "^$1==" requirements.txt | cut -d' ' -f1; }
mkdir -p "$DEST"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d "$DEST" \
  "$(pin bitsandbytes)" "$(pin torchao)" "$(pin datasets)" "$(pin transformers)" "$(pin gguf)" \
  dill multiprocess xxhash liger-kernel==0.8.5
ls "$DEST"
