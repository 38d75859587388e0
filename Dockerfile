# syntax=docker/dockerfile:1
# trustserve container image (docs/DEPLOY.md). Stages:
#   builder  virtual environment in /opt/venv: PyTorch from TORCH_INDEX_URL (CPU wheels by default), then trustserve
#   test     builder + dev tools + the repository; `docker build --target test .` runs the unit tests
#   baked    runtime + one preset's weights fetched at build time, for air-gapped sites (--target baked)
#   runtime  the default: slim Debian Python, non-root, healthcheck on /readyz, presets and store on volumes
# CUDA image: --build-arg TORCH_VARIANT=cu128. PyTorch's CUDA wheels carry the CUDA runtime; the host needs
# the NVIDIA driver and the NVIDIA Container Toolkit (deploy/docker-compose.gpu.yml).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
# keep equal to the pins in pyproject.toml (tests/deploy/test_dockerfile.py checks)
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv \
    && pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
WORKDIR /src
# dependencies first (a layer that survives code changes), then the package itself
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
COPY app ./app
RUN pip install --no-deps .

# ---------------------------------------------------------------------------------------------------------
FROM builder AS test
ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# the system packages .ci/run installs, less PostgreSQL (its tests skip without a database server)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends dataset-fashion-mnist espeak-ng sox prometheus \
    && rm -rf /var/lib/apt/lists/*
COPY . /src
RUN pip install -e '.[dev,datasets]' \
    && pip install --no-deps 'animal-mnist==0.4'
# the README's test command (the same line ends .ci/run)
RUN python3 -m pytest -q

# ---------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime-base
ARG APP_UID=10001
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    XDG_CACHE_HOME=/opt/trustserve/cache \
    HF_HOME=/opt/trustserve/cache/huggingface \
    TORCH_HOME=/opt/trustserve/cache/torch \
    TRUSTSERVE_HOST=0.0.0.0 \
    TRUSTSERVE_PORT=8000 \
    TRUSTSERVE_MODELS_DIR=/opt/trustserve/models \
    TRUSTSERVE_STORE_DIR=/var/lib/trustserve/store
RUN groupadd --system --gid "${APP_UID}" trustserve \
    && useradd --system --uid "${APP_UID}" --gid trustserve --home-dir /var/lib/trustserve --shell /usr/sbin/nologin trustserve \
    && mkdir -p /var/lib/trustserve/store /opt/trustserve/cache \
    && chown -R trustserve:trustserve /var/lib/trustserve /opt/trustserve/cache
COPY --from=builder /opt/venv /opt/venv
COPY models /opt/trustserve/models
# numeric, so Kubernetes' runAsNonRoot can verify it
USER ${APP_UID}:${APP_UID}
WORKDIR /var/lib/trustserve
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('TRUSTSERVE_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["trustserve"]
CMD ["serve"]

# ---------------------------------------------------------------------------------------------------------
FROM runtime-base AS baked
# a preset name from models/ (add your YAML there before building). Its downloads and caches go to a
# folder of their own, so a writable cache volume mounted over /opt/trustserve/cache (deploy/k8s) does
# not hide them.
ARG BAKE_MODEL=offline-conse
ARG APP_UID=10001
ENV XDG_CACHE_HOME=/opt/trustserve/baked \
    HF_HOME=/opt/trustserve/baked/huggingface \
    TORCH_HOME=/opt/trustserve/baked/torch
USER 0
RUN mkdir -p /opt/trustserve/baked && chown "${APP_UID}:${APP_UID}" /opt/trustserve/baked
USER ${APP_UID}:${APP_UID}
COPY deploy/docker/bake_model.py /opt/trustserve/bake_model.py
RUN python /opt/trustserve/bake_model.py "${BAKE_MODEL}"
ENV TRUSTSERVE_MODEL=${BAKE_MODEL} \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
VOLUME ["/opt/trustserve/models", "/var/lib/trustserve/store"]

# ---------------------------------------------------------------------------------------------------------
FROM runtime-base AS runtime
VOLUME ["/opt/trustserve/models", "/var/lib/trustserve/store"]
