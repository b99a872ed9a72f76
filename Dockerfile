# The pipeline for one NVIDIA GPU: scripts + JupyterLab (notebook.ipynb) on :8000, data in /project.
#   docker build -t kafka .
#   docker run -d --name kafka --gpus all --shm-size 2g -p 127.0.0.1:8000:8000 -v "$PWD/project:/project" kafka
#   docker logs kafka        # shows the Jupyter URL with its token (or set -e JUPYTER_TOKEN=...)
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    KAFKA_PROJECT_DIR=/project \
    PYTHONPATH=/app \
    HF_HOME=/project/.cache/huggingface \
    MPLCONFIGDIR=/tmp/matplotlib \
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
# expandable_segments: PyTorch's allocator grows its segments instead of leaving fragments, which
# on a 12 GB card is the difference between fitting a batch and a false out-of-memory.

# The pinned torch from PyPI is the CUDA 13 build (CUDA runtime libraries included): it needs an
# NVIDIA driver of the 580 series or newer. For an older driver, build the same torch version for
# CUDA 12 from PyTorch's own index (cu129: the CUDA 12 build with kernels for the newest cards too):
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu129 -t kafka .
ARG TORCH_INDEX_URL=
COPY requirements.txt requirements-llama.txt /app/
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
      pip install --index-url "$TORCH_INDEX_URL" "$(grep -E '^torch==' /app/requirements.txt | cut -d' ' -f1)"; \
    fi && pip install -r /app/requirements.txt

# llama.cpp (llama-cpp-python, built from its sdist: 10-20 minutes on 2 cores, less with more) for
# step 4's checks and q4_k_m. Built for any x86-64 CPU with AVX2 (GGML_NATIVE=OFF), not only for the
# machine that builds the image; its compiler stays for the OpenMP runtime.
RUN apt-get update && apt-get install -y --no-install-recommends build-essential && rm -rf /var/lib/apt/lists/* \
    && CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF" \
       pip install -r /app/requirements-llama.txt

# Never root: a fixed uid so files written to the /project volume belong to a normal user. The
# code in /app belongs to root: the user reads and runs it, and cannot change it by accident.
# Jupyter serves /project (PYTHONPATH finds the code from there).
RUN useradd --create-home --uid 1000 kafka && mkdir -p /project && chown kafka:kafka /project
WORKDIR /app
COPY *.py notebook.ipynb docker-entrypoint.sh pyproject.toml /app/
COPY chateau /app/chateau
COPY dev /app/dev
COPY bench /app/bench
COPY profiles /app/profiles
USER kafka

VOLUME /project
EXPOSE 8000
ENTRYPOINT ["/app/docker-entrypoint.sh"]
