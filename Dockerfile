# mtdp command-line image (CPU). The Cytomine apps extend this file.
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY mtdp_core ./mtdp_core
RUN pip install --no-cache-dir . \
    && mtdp weights verify efficientnet_lite0
ENTRYPOINT ["mtdp"]
CMD ["--help"]
