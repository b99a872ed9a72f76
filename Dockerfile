# The pipeline for one NVIDIA GPU: scripts + JupyterLab (notebook.ipynb) on :8000, data in /project.
#   docker build -t kafka .
#   docker run -d --name kafka --gpus all -p 127.0.0.1:8000:8000 -v "$PWD/project:/project" kafka
#   docker logs kafka        # shows the Jupyter URL with its token (or set -e JUPYTER_TOKEN=...)
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    KAFKA_PROJECT_DIR=/project \
    HF_HOME=/project/.cache/huggingface \
    MPLCONFIGDIR=/tmp/matplotlib

# The pinned torch is the CUDA build on PyPI for Linux x86_64 (CUDA runtime libraries included).
COPY requirements.txt /app/requirements.txt
RUN pip install -r /app/requirements.txt

# Never root: a fixed uid so files written to the /project volume belong to a normal user.
RUN useradd --create-home --uid 1000 kafka && mkdir -p /project && chown kafka:kafka /project /app
WORKDIR /app
COPY --chown=kafka:kafka *.py notebook.ipynb docker-entrypoint.sh /app/
COPY --chown=kafka:kafka chateau /app/chateau
COPY --chown=kafka:kafka dev /app/dev
COPY --chown=kafka:kafka bench /app/bench
USER kafka

VOLUME /project
EXPOSE 8000
ENTRYPOINT ["/app/docker-entrypoint.sh"]
