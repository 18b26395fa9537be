# syntax=docker/dockerfile:1
# The mtdp Cytomine / BIAFLOWS apps: one image per app, from shared stages.
#
#   docker build --target svm_train -t mtdp/s_mtdp-svm-train:1.0.0 .
#   docker build --target svm_train_cpu -t mtdp/s_mtdp-svm-train:1.0.0-cpu .    (no torch: CPU-only servers)
#   docker run --rm mtdp/s_mtdp-svm-train:1.0.0 --cytomine_host https://cytomine.example.org ...
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD/data:/data" mtdp/s_mtdp-svm-train:1.0.0 \
#       --local --infolder /data/in --outfolder /data/out
#   singularity pull mtdp-svm-train.sif docker://mtdp/s_mtdp-svm-train:1.0.0    (Cytomine's processing servers)
#
# Targets: extract_features, svm_train (the default), svm_predict, finetune_predict, slide_classify:
# torch, CUDA (or TORCH=cpu); and, for CPU-only servers, the torch-free images of the apps that only
# run a frozen backbone: extract_features_cpu, svm_train_cpu, svm_predict_cpu, slide_classify_cpu
# (ONNX Runtime and the backbones' graphs, exported at build time). finetune_predict trains its
# network: torch only. appengine_<task>: the App Engine tasks (classify, train, finetune,
# extract_features), built by `mtdp appengine bundle TASK`.
# Stages, in the order of how often they change (each rebuilds only what follows it):
#   python     the base image, the non-root user, the environment          (almost never)
#   torch      the torch pair of requirements/torch.txt, checked          (a torch upgrade)
#   deps       every other dependency at the versions of requirements/docker.txt   (a dependency bump)
#   weights    weights files, fetched and verified in a stage of their own (the weights list, the
#              weights registry in mtdp_core/backbones): the image only copies the result
#   graphs     the backbones' ONNX graphs, exported from the weights with torch and verified, from
#              the modules that make them only (the graphs list, sizes, backbones, the engines in
#              mtdp_core/inference): the images only copy the result (torch's run them on CPUs)
#   app        the weights and graphs, mtdp itself, workflows, descriptors  (every commit)
#   <app>      the app's descriptor and entrypoint
# and, FROM python again, without torch:
#   inference  the dependencies of requirements/docker-inference.txt (ONNX Runtime, no torch)
#   app_cpu    the graphs, mtdp (checked: no torch, engine auto = onnxruntime), workflows, descriptors
#   <app>_cpu  the app's descriptor and entrypoint
#
# Build arguments (none of them reaches a stage before it is used):
#   TORCH               cuda (default): PyPI's build, with its nvidia-* CUDA libraries (~6 GB image);
#                       cpu: the +cpu builds from TORCH_INDEX_URL; the build fails if it cannot get
#                       them or if any CUDA library got in.
#   TORCH_INDEX_URL     where torch comes from (default: PyPI; https://download.pytorch.org/whl/cpu for cpu)
#   MTDP_FETCH_WEIGHTS  1 (default): fetch MTDP_WEIGHTS at build time and verify their sha256; 0: skip
#                       (no network). Weights are never downloaded when a job runs.
#   MTDP_WEIGHTS        "arch:source" pairs (default "densenet121:imagenet resnet50:imagenet");
#                       EfficientNet-Lite0's ImageNet weights come with a Python wheel. Files in
#                       docker/weights/ are copied in and verified (e.g. the paper's multi-task weights).
#   MTDP_GRAPHS         the images' ONNX graphs, "arch:weights" pairs (e.g. "efficientnet_lite0:imagenet
#                       densenet121:mtdp"); empty (default): one per published weights file of the image
#                       (the weights stage's, and EfficientNet-Lite0's). Each graph is checked against torch
#                       and listed with its sha256 in /opt/mtdp/graphs/SHA256SUMS, or the build fails naming it.
#   MTDP_GRAPH_SIZES    their network input sizes in pixels (default 224, the apps' image_size; e.g. 224,384)
#   PYTHON_IMAGE        the base image (default python:3.11-slim)
# A wheel folder instead of the package index (nothing downloaded; it must hold every wheel):
#   podman build --build-context wheels=DIR ...    (docker buildx build --build-context wheels=DIR ...)

ARG PYTHON_IMAGE=python:3.11-slim

# An empty wheel folder, replaced by --build-context wheels=DIR.
FROM scratch AS wheels

FROM ${PYTHON_IMAGE} AS python
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

# The biggest layer, shared by every app image.
FROM python AS torch
ARG TORCH=cuda
ARG TORCH_INDEX_URL=""
COPY requirements/torch.txt docker/install-torch.sh /opt/mtdp/build/
RUN --mount=type=bind,from=wheels,target=/wheels \
    sh /opt/mtdp/build/install-torch.sh /opt/mtdp/build/torch.txt

# Exact versions, no resolver: --no-deps, then `pip check` in the app stage.
FROM torch AS deps
COPY requirements/docker.txt /opt/mtdp/build/
RUN --mount=type=bind,from=wheels,target=/wheels \
    set -eu; if ls /wheels/*.whl >/dev/null 2>&1; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels; fi; \
    pip install --no-cache-dir --no-deps --requirement /opt/mtdp/build/docker.txt

# Runs the weights command from the modules that define the weights (not from the whole package),
# so that a commit elsewhere in mtdp_core does not fetch them again.
FROM deps AS weights
COPY mtdp_core/__init__.py mtdp_core/__main__.py mtdp_core/cli.py mtdp_core/errors.py mtdp_core/logs.py \
    /opt/mtdp/weights-cli/mtdp_core/
COPY mtdp_core/backbones /opt/mtdp/weights-cli/mtdp_core/backbones
COPY docker/fetch-weights.sh /opt/mtdp/build/
COPY docker/weights/ /opt/mtdp/weights/
ARG MTDP_FETCH_WEIGHTS=1
ARG MTDP_WEIGHTS="densenet121:imagenet resnet50:imagenet"
RUN PYTHONPATH=/opt/mtdp/weights-cli sh /opt/mtdp/build/fetch-weights.sh

# Runs the export from the modules that make graphs (as the weights stage), so that a commit elsewhere
# in mtdp_core does not export them again (the graphs' key holds mtdp's version, not the commit).
FROM weights AS graphs
COPY mtdp_core/__init__.py mtdp_core/__main__.py mtdp_core/cli.py mtdp_core/errors.py mtdp_core/logs.py \
    mtdp_core/runtime.py /opt/mtdp/graphs-cli/mtdp_core/
COPY mtdp_core/backbones /opt/mtdp/graphs-cli/mtdp_core/backbones
COPY mtdp_core/inference /opt/mtdp/graphs-cli/mtdp_core/inference
COPY docker/export-graphs.sh /opt/mtdp/build/
ARG MTDP_GRAPHS=""
ARG MTDP_GRAPH_SIZES=224
RUN PYTHONPATH=/opt/mtdp/graphs-cli MTDP_GRAPH_DIR=/opt/mtdp/graphs sh /opt/mtdp/build/export-graphs.sh

# The graphs too: on a CPU, engine auto runs them (no export at job time, which an --rm container
# would lose); the checks that import onnxruntime run with a throwaway HOME (see app_cpu).
FROM deps AS app
ENV MTDP_GRAPH_DIR=/opt/mtdp/graphs
COPY --from=weights /opt/mtdp/weights /opt/mtdp/weights
COPY --from=graphs /opt/mtdp/graphs /opt/mtdp/graphs
WORKDIR /app
COPY pyproject.toml README.md ./
COPY mtdp_core ./mtdp_core
# hadolint ignore=DL3013
RUN --mount=type=bind,from=wheels,target=/wheels \
    set -eu; if ls /wheels/*.whl >/dev/null 2>&1; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels; fi; \
    pip install --no-cache-dir --no-deps .; \
    pip check; \
    rm -rf /app/mtdp_core /app/build; \
    mtdp weights verify; \
    home=$(mktemp -d); \
    HOME=$home mtdp engine verify --require; \
    rm -rf "$home"
COPY workflows ./workflows
COPY descriptors ./descriptors
WORKDIR /work
USER 1000:1000

# One target per app: its descriptor, /app/run.py (the path Cytomine's command line names) and
# the entrypoint, which forwards every argument.
FROM app AS extract_features
COPY descriptors/extract_features.json /app/descriptor.json
COPY workflows/extract_features/run.py /app/run.py
ENTRYPOINT ["python", "/app/workflows/extract_features/run.py"]

FROM app AS svm_predict
COPY descriptors/svm_predict.json /app/descriptor.json
COPY workflows/svm_predict/run.py /app/run.py
ENTRYPOINT ["python", "/app/workflows/svm_predict/run.py"]

FROM app AS finetune_predict
COPY descriptors/finetune_predict.json /app/descriptor.json
COPY workflows/finetune_predict/run.py /app/run.py
ENTRYPOINT ["python", "/app/workflows/finetune_predict/run.py"]

FROM app AS slide_classify
COPY descriptors/slide_classify.json /app/descriptor.json
COPY workflows/slide_classify/run.py /app/run.py
ENTRYPOINT ["python", "/app/workflows/slide_classify/run.py"]

# The torch-free images: the dependencies without torch, torchvision or the exporter.
FROM python AS inference
COPY requirements/docker-inference.txt /opt/mtdp/build/
RUN --mount=type=bind,from=wheels,target=/wheels \
    set -eu; if ls /wheels/*.whl >/dev/null 2>&1; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels; fi; \
    pip install --no-cache-dir --no-deps --requirement /opt/mtdp/build/docker-inference.txt

# The graphs (verified against their SHA256SUMS), then mtdp, checked: `pip check` misses only what is
# left out on purpose, torch cannot be imported, engine auto is onnxruntime and engine torch says what to do.
# The checks run with a throwaway HOME: onnxruntime writes ~/.cache/Microsoft when imported, and a
# root-owned ~/.cache would stop uid 1000 from reading any cache or weights folder under it.
FROM inference AS app_cpu
ENV MTDP_GRAPH_DIR=/opt/mtdp/graphs
COPY --from=graphs /opt/mtdp/graphs /opt/mtdp/graphs
WORKDIR /app
COPY pyproject.toml README.md ./
COPY mtdp_core ./mtdp_core
COPY docker/check-torch-free.py /opt/mtdp/build/
# hadolint ignore=DL3013
RUN --mount=type=bind,from=wheels,target=/wheels \
    set -eu; if ls /wheels/*.whl >/dev/null 2>&1; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels; fi; \
    pip install --no-cache-dir --no-deps .; \
    rm -rf /app/mtdp_core /app/build; \
    home=$(mktemp -d); \
    HOME=$home python /opt/mtdp/build/check-torch-free.py; \
    HOME=$home mtdp engine verify --require; \
    rm -rf "$home"
COPY workflows ./workflows
COPY descriptors ./descriptors
WORKDIR /work
USER 1000:1000

FROM app_cpu AS extract_features_cpu
COPY descriptors/extract_features.json /app/descriptor.json
COPY workflows/extract_features/run.py /app/run.py
ENTRYPOINT ["python", "/app/workflows/extract_features/run.py"]

FROM app_cpu AS svm_predict_cpu
COPY descriptors/svm_predict.json /app/descriptor.json
COPY workflows/svm_predict/run.py /app/run.py
ENTRYPOINT ["python", "/app/workflows/svm_predict/run.py"]

FROM app_cpu AS slide_classify_cpu
COPY descriptors/slide_classify.json /app/descriptor.json
COPY workflows/slide_classify/run.py /app/run.py
ENTRYPOINT ["python", "/app/workflows/slide_classify/run.py"]

FROM app_cpu AS svm_train_cpu
COPY descriptors/svm_train.json /app/descriptor.json
COPY workflows/svm_train/run.py /app/run.py
ENTRYPOINT ["python", "/app/workflows/svm_train/run.py"]

# The App Engine tasks of the current Cytomine (docs/appengine.md): `mtdp appengine bundle TASK`
# builds appengine_<task> and saves it into the zip to upload. The App Engine runs the entrypoint
# with no arguments, /inputs and /outputs mounted. train and extract_features run a frozen backbone:
# torch-free; classify also applies fine-tuned networks and finetune trains one: torch.
FROM app_cpu AS appengine_train
ENTRYPOINT ["python", "-m", "mtdp_core.appengine", "train"]

FROM app_cpu AS appengine_extract_features
ENTRYPOINT ["python", "-m", "mtdp_core.appengine", "extract_features"]

FROM app AS appengine_classify
ENTRYPOINT ["python", "-m", "mtdp_core.appengine", "classify"]

FROM app AS appengine_finetune
ENTRYPOINT ["python", "-m", "mtdp_core.appengine", "finetune"]

# Last: the default target of a plain `docker build .`.
FROM app AS svm_train
COPY descriptors/svm_train.json /app/descriptor.json
COPY workflows/svm_train/run.py /app/run.py
ENTRYPOINT ["python", "/app/workflows/svm_train/run.py"]
