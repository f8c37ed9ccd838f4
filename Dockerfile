# syntax=docker/dockerfile:1
# The loraq worker image: Ray Serve, the model stack (the `worker` extra) and the bundled
# demo kit. Its entrypoint starts a Ray head and runs `loraq serve` on it.
#
#   docker build -t loraq .                                        # CPU torch (default)
#   docker build --build-arg TORCH_VARIANT=cu128 -t loraq:cu128 .  # CUDA 12.8 torch
#   docker build --build-arg KERNEL_LEVEL=x86-64-v4 -t loraq .      # CPU kernels for AVX-512
#   docker run --rm -p 8000:8000 -p 8265:8265 -p 8080:8080 --shm-size=2g \
#     -e LORAQ_REDIS_URL=redis://redis-host:6379/0 loraq
#
# The build downloads wheels; the running container downloads nothing (HF_HUB_OFFLINE=1,
# Ray usage stats off): mount a real model and point LORAQ_MODEL / LORAQ_ADAPTER_DIR at it.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
# A PyTorch wheel index: cpu, or a CUDA build such as cu128 (needs the NVIDIA runtime).
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
# The x86-64 level the CPU kernels (workers/engine/csrc) are built for; a replica checks its
# CPU against it at start. Empty: none built ahead (an arm64 image), PyTorch's path then.
ARG KERNEL_LEVEL=x86-64-v3
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/loraq/bin:$PATH
# gcc builds the CPU kernels here; the final image has none.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/loraq
# torch first and pinned: the extra's `torch==2.13.0` is then already met, and PyPI's
# default Linux wheel (a multi-GB CUDA build) is never pulled into the CPU image.
RUN pip install "torch==2.13.0" --index-url "${TORCH_INDEX_URL}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY producer producer
COPY workers workers
COPY demo demo
RUN pip install ".[worker]"
# Into the installed package (workers/engine/prebuilt/), so from outside /src, whose
# workers/ would be imported first.
RUN if [ -n "${KERNEL_LEVEL}" ]; then cd / && python -m workers.engine.native "${KERNEL_LEVEL}"; fi

FROM ${PYTHON_IMAGE}
# tini reaps the processes Ray leaves behind; wget is what KubeRay's readiness probe of
# RayService worker pods runs.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini wget \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 --shell /bin/bash loraq
COPY --from=build /opt/loraq /opt/loraq
COPY deploy/docker/entrypoint.sh /usr/local/bin/loraq-entrypoint
# Serve kills an HTTP proxy that is not ready in 5 s (its default): too short on a busy node.
# The proxy callback gives Serve's proxy a request-header timeout also where Serve is not
# started by `loraq serve` (KubeRay's serveConfigV2): workers/serve/header_timeout.py.
ENV PATH=/opt/loraq/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    RAY_DASHBOARD_PORT=8265 \
    RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S=30 \
    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=workers.serve.header_timeout:install \
    LORAQ_HTTP_HEADER_TIMEOUT_S=10 \
    LORAQ_HTTP_HOST=0.0.0.0 \
    LORAQ_HTTP_PORT=8000 \
    LORAQ_METRICS_EXPORT_PORT=8080
USER loraq
WORKDIR /home/loraq
# Serve HTTP (gateway), Ray dashboard, Ray's Prometheus metrics export.
EXPOSE 8000 8265 8080
ENTRYPOINT ["tini", "--", "loraq-entrypoint"]
