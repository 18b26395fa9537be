# syntax=docker/dockerfile:1
# The mtdp Cytomine / BIAFLOWS apps: one image per app, from one base.
#
#   docker build --target svm_train -t mtdp/s_mtdp-svm-train:1.0.0 .
#   docker run --rm mtdp/s_mtdp-svm-train:1.0.0 --cytomine_host https://cytomine.example.org ...
#   docker run --rm -v "$PWD/data:/data" mtdp/s_mtdp-svm-train:1.0.0 --local --infolder /data/in --outfolder /data/out
#   singularity pull mtdp-svm-train.sif docker://mtdp/s_mtdp-svm-train:1.0.0    (Cytomine's processing servers)
#
# Targets: extract_features, svm_train, svm_predict, finetune_predict, slide_classify (and base).
# Build arguments:
#   TORCH_INDEX_URL     where torch/torchvision come from. Default: PyPI (CUDA build, ~5 GB with its
#                       nvidia-* wheels). For a CPU-only image (~1.5 GB):
#                       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
#   PIP_FIND_LINKS      a folder of wheels mounted at build time, to install without downloading them,
#                       e.g. podman build -v /opt/wheels:/wheels:ro --build-arg PIP_FIND_LINKS=/wheels
#   MTDP_FETCH_WEIGHTS  1 (default): download MTDP_WEIGHTS at build time and check their sha256;
#                       0: skip (builds without network). Weights are never downloaded when a job runs.
#   MTDP_WEIGHTS        "arch:source" pairs to fetch (efficientnet_lite0 ImageNet weights, the apps'
#                       default, come with a Python wheel and are always there). Files in docker/weights/
#                       are copied in and verified too (e.g. the paper's multi-task weights).

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS base
ARG TORCH_INDEX_URL=""
ARG PIP_FIND_LINKS=""
ARG MTDP_FETCH_WEIGHTS=1
ARG MTDP_WEIGHTS="densenet121:imagenet resnet50:imagenet"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MTDP_WEIGHTS_DIR=/opt/mtdp/weights \
    MPLCONFIGDIR=/tmp/matplotlib \
    HOME=/home/app

RUN useradd --create-home --home-dir /home/app --uid 1000 --shell /usr/sbin/nologin app \
    && mkdir -p /opt/mtdp/weights /work \
    && chown app:app /work

# torch and torchvision first (the biggest layer, reused by every app), pinned as a pair.
# POSIX sh only: podman builds OCI images, where SHELL is ignored. $sources is split on purpose
# (hadolint then takes it for an unpinned package: DL3013 does not apply, both are pinned).
# hadolint ignore=DL3013,SC2086
RUN set -eu; sources=""; \
    if [ -n "$TORCH_INDEX_URL" ]; then sources="--index-url $TORCH_INDEX_URL --extra-index-url https://pypi.org/simple"; fi; \
    if [ -n "$PIP_FIND_LINKS" ]; then sources="$sources --find-links $PIP_FIND_LINKS"; fi; \
    pip install --no-cache-dir $sources torch==2.14.1 torchvision==0.29.1

# Everything else at the exact versions of requirements/docker.txt (no resolver surprises).
COPY requirements/docker.txt /tmp/requirements-docker.txt
# hadolint ignore=SC2086
RUN set -eu; sources=""; if [ -n "$PIP_FIND_LINKS" ]; then sources="--find-links $PIP_FIND_LINKS"; fi; \
    pip install --no-cache-dir --no-deps $sources --requirement /tmp/requirements-docker.txt; \
    rm /tmp/requirements-docker.txt

WORKDIR /app
COPY pyproject.toml README.md ./
COPY mtdp_core ./mtdp_core
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --no-deps . \
    && pip check \
    && rm -rf /app/mtdp_core /app/build

COPY docker/weights/ /opt/mtdp/weights/
RUN rm -f /opt/mtdp/weights/README.md \
    && if [ "$MTDP_FETCH_WEIGHTS" = "1" ]; then \
         for pair in $MTDP_WEIGHTS; do mtdp weights fetch "${pair%%:*}" "${pair##*:}" --dir /opt/mtdp/weights; done; \
       fi \
    && mtdp weights fetch efficientnet_lite0 imagenet \
    && mtdp weights verify

COPY workflows ./workflows
COPY descriptors ./descriptors
WORKDIR /work
USER 1000:1000

FROM base AS extract_features
USER 0
RUN cp /app/descriptors/extract_features.json /app/descriptor.json \
    && ln -s /app/workflows/extract_features/run.py /app/run.py
USER 1000:1000
ENTRYPOINT ["python", "/app/workflows/extract_features/run.py"]

FROM base AS svm_predict
USER 0
RUN cp /app/descriptors/svm_predict.json /app/descriptor.json \
    && ln -s /app/workflows/svm_predict/run.py /app/run.py
USER 1000:1000
ENTRYPOINT ["python", "/app/workflows/svm_predict/run.py"]

FROM base AS finetune_predict
USER 0
RUN cp /app/descriptors/finetune_predict.json /app/descriptor.json \
    && ln -s /app/workflows/finetune_predict/run.py /app/run.py
USER 1000:1000
ENTRYPOINT ["python", "/app/workflows/finetune_predict/run.py"]

FROM base AS slide_classify
USER 0
RUN cp /app/descriptors/slide_classify.json /app/descriptor.json \
    && ln -s /app/workflows/slide_classify/run.py /app/run.py
USER 1000:1000
ENTRYPOINT ["python", "/app/workflows/slide_classify/run.py"]

# Last: the default target of a plain `docker build .`.
FROM base AS svm_train
USER 0
RUN cp /app/descriptors/svm_train.json /app/descriptor.json \
    && ln -s /app/workflows/svm_train/run.py /app/run.py
USER 1000:1000
ENTRYPOINT ["python", "/app/workflows/svm_train/run.py"]
