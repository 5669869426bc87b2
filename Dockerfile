# The tpgrpo image: the package, its CLI (`tpgrpo`), Prefect, Dask and Tesseract, run as a non-root
# user. One Dockerfile, two builds (docker-compose.yml does both; docs/cluster.md explains):
#
#   CPU (Prefect worker, Dask scheduler):
#     docker build -t tpgrpo --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
#   GPU (the Dask worker that runs the model stages): a CUDA runtime base image
#     docker build -t tpgrpo-gpu --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 .
#
# BASE_IMAGE      the base: a Python image, or a CUDA image (its python3 and venv come from apt).
#                 Keep the Python minor version equal across images that talk through Dask
#                 (it pickles between them): python:3.12-slim and Ubuntu 24.04 both have 3.12.
# TORCH_VERSION   torch is pinned, as in pyproject.toml and the Makefile.
# TORCH_INDEX_URL where torch comes from; empty: the default index (CUDA-enabled wheels on Linux).
# EXTRAS          optional dependency groups of the package (ocr: pytesseract; dask: prefect-dask).
# TPGRPO_COMMIT   the git commit the image is built from (the build context has no .git): recorded
#                 in every manifest's code version. docker-compose passes $TPGRPO_COMMIT; set it with
#                 TPGRPO_COMMIT=$(git rev-parse --short=12 HEAD) docker compose build
ARG BASE_IMAGE=python:3.12-slim-bookworm
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=
ARG EXTRAS=ocr,dask
ARG TPGRPO_COMMIT=

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# System packages: Tesseract for the OCR reward; python3 + venv only where the base has no Python
# (CUDA images).
RUN set -eux; \
    apt-get update; \
    packages="tesseract-ocr tesseract-ocr-eng ca-certificates"; \
    if ! command -v python3 >/dev/null 2>&1; then packages="$packages python3 python3-venv"; fi; \
    apt-get install -y --no-install-recommends $packages; \
    rm -rf /var/lib/apt/lists/*; \
    tesseract --version

# A virtual environment (Ubuntu's system Python refuses pip installs, PEP 668).
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, pinned, in its own layer (the largest; it changes only with TORCH_VERSION).
RUN set -eux; \
    if [ -n "$TORCH_INDEX_URL" ]; then \
      pip install "torch==${TORCH_VERSION}" --index-url "$TORCH_INDEX_URL"; \
    else \
      pip install "torch==${TORCH_VERSION}"; \
    fi

# The package (not editable). The source stays in /opt/tpgrpo for Prefect deployments whose
# entrypoints are paths in this tree (prefect.yaml).
WORKDIR /opt/tpgrpo
COPY . /opt/tpgrpo
RUN set -eux; \
    if [ -n "$TPGRPO_COMMIT" ]; then printf '%s\n' "$TPGRPO_COMMIT" > /opt/tpgrpo/tpgrpo/BUILD_COMMIT; fi; \
    pip install "/opt/tpgrpo[${EXTRAS}]" "torch==${TORCH_VERSION}"; \
    tpgrpo --help >/dev/null; \
    tpgrpo --version

# Non-root user; runs, caches and Prefect's home are its own.
RUN set -eux; \
    useradd --create-home --uid 10001 --shell /usr/sbin/nologin tpgrpo; \
    mkdir -p /work/runs; \
    cp -rL /opt/tpgrpo/configs /work/configs; \
    chown -R tpgrpo:tpgrpo /work
USER tpgrpo
WORKDIR /work
ENV HOME=/home/tpgrpo \
    PREFECT_HOME=/home/tpgrpo/.prefect \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    HF_HOME=/home/tpgrpo/.cache/huggingface \
    TOKENIZERS_PARALLELISM=false

# Services set their own command (docker-compose.yml); by default the CLI's help.
CMD ["tpgrpo", "--help"]
