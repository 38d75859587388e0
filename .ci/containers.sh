#!/usr/bin/env bash
# Builds the container images and runs them for real, with podman from Debian's packages and no registry
# (called by .ci/run; usable by hand from the repository root: bash .ci/containers.sh):
#   1. podman, buildah, podman-compose, debootstrap from Debian;
#   2. base images made with debootstrap (localhost/debian:bookworm) and Debian's python3, prometheus,
#      postgresql and nginx packages (deploy/debian/);
#   3. the project images (Dockerfile targets runtime and slim) with the host's pip set-up mounted read-only;
#   4. one container of each: /readyz, the coffee photo classified as espresso, API keys enforced,
#      HEALTHCHECK, the multimodal checkpoint; the slim one also: no torch in the image, every tower on
#      ONNX Runtime from the baked export cache;
#   5. deploy/docker-compose.yml (trustserve + Prometheus) on the slim image: the scrape of trustserve:8000
#      is up;
#   6. deploy/docker-compose.replicas.yml (PostgreSQL + 2 replicas + nginx) on the slim image: a label set
#      created on one replica is served by the other.
# Every check is explicit (podman-compose exits 0 even when a service fails). Everything started is removed
# on exit, failure included; images, built layers and pip's download cache are kept for the next run.
# Prints the timings and sizes docs/DEPLOY.md reports.
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF=$PWD/.ci/containers.conf
export BUILDAH_FORMAT=docker  # the OCI format has no HEALTHCHECK
export DEBIAN_FRONTEND=noninteractive

RELEASE=bookworm
DEBIAN_IMAGE=localhost/debian:$RELEASE
PYTHON_IMAGE=localhost/debian-python:$RELEASE
PROMETHEUS_IMAGE=localhost/debian-prometheus:$RELEASE
POSTGRES_IMAGE=localhost/debian-postgresql:$RELEASE
NGINX_IMAGE=localhost/debian-nginx:$RELEASE
IMAGE_TAG=${CI_IMAGE_TAG:-ci}
PROJECT_IMAGE=localhost/trustserve:$IMAGE_TAG
SLIM_IMAGE=localhost/trustserve:$IMAGE_TAG-slim
SLIM_RUNTIME=onnxruntime  # the Dockerfile's default SLIM_RUNTIME
# the compose stacks run the slim image (image: trustserve:${TRUSTSERVE_IMAGE_TAG}): it starts in seconds
export TRUSTSERVE_IMAGE_TAG=$IMAGE_TAG-slim
RUN_ID=tsci$$
WORK=$(mktemp -d /var/tmp/trustserve-containers.XXXXXX)
STARTED=$(date +%s)
declare -a TIMINGS=()
declare -a PROJECTS=()  # compose projects started: "project|file"

log() { printf '== %s\n' "$*"; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }
record() { TIMINGS+=("$1|$2"); printf '   %s: %s\n' "$1" "$2"; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
checks() { python3 .ci/containers.py "$@"; }

project_containers() { podman ps -aq --filter "label=io.podman.compose.project=$1"; }

cleanup() {
  local status=$?
  set +e
  local entry project file
  for entry in "${PROJECTS[@]}"; do
    project=${entry%%|*} file=${entry#*|}
    # -v: with their anonymous volumes (podman-compose's down keeps those)
    project_containers "$project" | xargs -r podman rm -f -v -t 5 >/dev/null 2>&1
    podman-compose -p "$project" -f "$file" down -v >/dev/null 2>&1
    podman volume ls -q --filter "label=io.podman.compose.project=$project" | xargs -r podman volume rm -f >/dev/null 2>&1
    podman network ls -q --filter "label=io.podman.compose.project=$project" | xargs -r podman network rm -f >/dev/null 2>&1
  done
  podman ps -aq --filter "name=^$RUN_ID-" | xargs -r podman rm -f -v -t 5 >/dev/null 2>&1
  local left
  left=$(podman ps -a --format '{{.Names}}' | grep -E "^$RUN_ID-" || true)
  [ -z "$left" ] || { echo "containers left behind: $left" >&2; status=1; }
  rm -rf "$WORK"
  if [ "$status" -ne 0 ]; then echo "containers: FAILED (exit $status)" >&2; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

show_logs() {  # the last lines of every container of this run, when a check failed
  local name
  for name in $(podman ps -a --format '{{.Names}}' | grep -E "^$RUN_ID-" || true); do
    echo "--- podman logs $name (last 40 lines)" >&2
    podman logs --tail 40 "$name" >&2 2>&1 || true
  done
}
fail() { echo "FAILED: $*" >&2; show_logs; exit 1; }

# --- 1. packages ----------------------------------------------------------------------------------------
install_packages() {
  local packages=(podman buildah podman-compose runc catatonit netavark aardvark-dns fuse-overlayfs
    slirp4netns uidmap debootstrap) missing=() p
  for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if ((${#missing[@]})); then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  podman version --format 'podman {{.Client.Version}}'
  podman-compose version 2>/dev/null | grep -i 'podman-compose' || true
}

# --- 2. base images -------------------------------------------------------------------------------------
build_debian_image() {
  # minbase Debian from the mirror apt already uses; kept between runs (CI_REFRESH_DEBIAN_BASE=1
  # makes a new one)
  if podman image exists "$DEBIAN_IMAGE" && [ -z "${CI_REFRESH_DEBIAN_BASE:-}" ]; then
    record "debian base image" "cached"
    return
  fi
  local start mirror rootfs=$WORK/rootfs
  start=$(now)
  mirror=$(checks apt-sources --release "$RELEASE" --mirror)
  debootstrap --variant=minbase "$RELEASE" "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log" >&2; fail "debootstrap $RELEASE from $mirror"; }
  rm -f "$rootfs/etc/apt/sources.list" "$rootfs/etc/hostname"
  checks apt-sources --release "$RELEASE" >"$rootfs/etc/apt/sources.list.d/debian.sources"
  : >"$rootfs/etc/resolv.conf"
  printf '#!/bin/sh\n# no services start inside an image build\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
  chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
  tar -C "$rootfs" --numeric-owner -c . \
    | podman import --change 'CMD ["/bin/bash"]' \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$DEBIAN_IMAGE" \
      >"$WORK/import.log" 2>&1 || { cat "$WORK/import.log" >&2; fail "podman import $DEBIAN_IMAGE"; }
  rm -rf "$rootfs"
  record "debian base image (debootstrap + import)" "$(since "$start") s"
}

build_debian_images() {  # Debian's packages on the base; podman's layer cache makes a rerun instant
  local start name image
  for name in python prometheus postgresql nginx; do
    image=localhost/debian-$name:$RELEASE
    start=$(now)
    podman build -q --network host --build-arg "DEBIAN_IMAGE=$DEBIAN_IMAGE" \
      -f "deploy/debian/$name.Containerfile" -t "$image" deploy/debian >"$WORK/build-$name.log" 2>&1 \
      || { tail -30 "$WORK/build-$name.log" >&2; fail "building $image"; }
    record "$image" "$(since "$start") s, $(image_size "$image")"
  done
}

image_size() { podman image inspect --format '{{.Size}}' "$1" | awk '{printf "%.2f GB", $1 / 1e9}'; }

# --- 3. the project image -------------------------------------------------------------------------------
in_image() { podman run --rm --no-healthcheck --user 0 --entrypoint "$2" "$1" "${@:3}"; }

build_image() {  # target image stages...: podman build of a Dockerfile target, then checks of the image
  local target=$1 image=$2 stages=("${@:3}") start index mounts inputs built_from before after stage tag extra kind
  index=$(python3 -m pip config get global.index-url 2>/dev/null || echo https://pypi.org/simple)
  mapfile -t mounts < <(checks pip-mounts)
  # torch from the configured package index (PyPI: its x86_64 wheel is the CUDA build); the host's pip
  # configuration and CA bundle are mounted read-only into the RUN steps, never copied into a layer
  local build=(podman build --network host --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE"
    --build-arg "TORCH_INDEX_URL=$index" "${mounts[@]}")
  # buildah's own cache check hashes the 6 GB environment (minutes): an image labelled with the digest of
  # the same inputs (build context files, build arguments, base image) is used as it is
  inputs=$(checks build-inputs Dockerfile .dockerignore pyproject.toml app models deploy/docker \
    --extra "$(podman image inspect --format '{{.Id}}' "$PYTHON_IMAGE")" "$index" "$target")
  built_from=$(podman image inspect --format '{{index .Labels "org.trustserve.build-inputs"}}' \
    "$image" 2>/dev/null || true)
  before=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
  start=$(now)
  if [ "$built_from" = "$inputs" ] && [ -z "${CI_REBUILD_IMAGE:-}" ]; then
    record "$image build" "skipped: inputs unchanged"
  else
    # the stages the image copies from are tagged too (localhost/trustserve-<stage>), so pruning old
    # images keeps them and their layers stay cached
    for stage in "${stages[@]}" "$target"; do
      tag=localhost/trustserve-$stage:$IMAGE_TAG extra=()
      [ "$stage" = "$target" ] && tag=$image extra=(--label "org.trustserve.build-inputs=$inputs")
      "${build[@]}" "${extra[@]}" --target "$stage" -t "$tag" . >>"$WORK/build-$target.log" 2>&1 \
        || { grep -v '^WARNING: Location' "$WORK/build-$target.log" | tail -40 >&2; fail "building $tag"; }
    done
    after=$(podman image inspect --format '{{.Id}}' "$image")
    kind="built"
    [ "$before" = "$after" ] && kind="all layers cached"
    record "$image build ($kind)" "$(since "$start") s"
    podman image prune -f >/dev/null  # earlier builds' untagged images; tagged images keep their layers
  fi
  record "$image size" "$(image_size "$image")"
  record "  of which /opt/venv" "$(in_image "$image" du -sh /opt/venv | cut -f1)"
  # nothing of the host's pip set-up may be in the image, not even an empty mount point
  local targets leaked
  targets=$(printf '%s\n' "${mounts[@]}" | grep -v '^-v$' | cut -d: -f2 | grep -vx /etc/ssl/certs/ca-certificates.crt)
  # shellcheck disable=SC2086  # one path per word
  leaked=$(in_image "$image" sh -c 'for p; do [ ! -e "$p" ] || echo "$p"; done' sh $targets)
  [ -z "$leaked" ] || fail "$image contains the host's pip set-up: $leaked"
  in_image "$image" cat /etc/ssl/certs/ca-certificates.crt >"$WORK/image-ca.crt"
  checks no-local-ca "$WORK/image-ca.crt" || fail "$image trusts this host's own CA certificates"
  [ "$(podman image inspect --format '{{.Config.Healthcheck}}' "$image")" != "<nil>" ] \
    || fail "$image has no HEALTHCHECK (built in OCI format?)"
}

check_slim_image() {  # the slim image holds no torch and no CUDA stack, and the baked export cache
  podman run --rm --no-healthcheck --entrypoint python -v "$PWD/.ci/containers.py:/tmp/containers.py:ro" \
    "$SLIM_IMAGE" /tmp/containers.py torch-free || fail "$SLIM_IMAGE is not torch-free"
  record "  of which the export cache" "$(in_image "$SLIM_IMAGE" du -sh /opt/trustserve/export | cut -f1)"
  # the server reads the cache but cannot change it
  [ "$(podman run --rm --no-healthcheck --entrypoint sh "$SLIM_IMAGE" -c \
    'test -w /opt/trustserve/export && echo writable || echo read-only')" = read-only ] \
    || fail "$SLIM_IMAGE: the export cache is writable by the server's user"
}

check_torch_build() {  # which torch the full image has: from PyPI on x86_64 it is the CUDA build
  local build
  build=$(podman run --rm --no-healthcheck --entrypoint python "$PROJECT_IMAGE" -c \
    'import torch; print("torch", torch.__version__ + ", CUDA", torch.version.cuda or "none (CPU build)")') \
    || fail "$PROJECT_IMAGE: torch does not import"
  record "  torch in it" "$build"
}

# --- 4. one container -----------------------------------------------------------------------------------
generate_keys() {
  CI_READ_KEY=read-$(python3 -c 'import secrets; print(secrets.token_hex(16))')
  CI_ADMIN_KEY=admin-$(python3 -c 'import secrets; print(secrets.token_hex(16))')
  export CI_READ_KEY CI_ADMIN_KEY
  # the single container reads them from a secret file (as in deploy/k8s), compose from the environment
  printf '# generated for one CI run\n%s:read\n%s:admin\n' "$CI_READ_KEY" "$CI_ADMIN_KEY" >"$WORK/api-keys"
  chmod 0644 "$WORK/api-keys"  # the folder is private (mktemp); the container user is uid 10001
  export TRUSTSERVE_API_KEYS="$CI_READ_KEY:read,$CI_ADMIN_KEY:admin"
  POSTGRES_PASSWORD=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
  export POSTGRES_PASSWORD
}

run_single_container() {  # image label [check options]: one container, its checks, then removed
  local image=$1 label=$2 name=${RUN_ID}-$2 port start ready settings=()
  # the full image runs its towers in torch, as the CUDA variant does on a GPU. Its default runtime, auto,
  # exports every tower to ONNX and OpenVINO and times them on each start (its cache is not a volume):
  # 146-228 s to ready at load 11-18 here, too close to the 300 s limit. The slim image runs the exports.
  [ "$image" = "$PROJECT_IMAGE" ] && settings=(-e TRUSTSERVE_RUNTIME=torch)
  port=$(free_port)
  start=$(now)
  podman run -d --name "$name" --init -p "127.0.0.1:$port:8000" "${settings[@]}" \
    -v "$WORK/api-keys:/run/secrets/trustserve-api-keys:ro" \
    -e TRUSTSERVE_API_KEYS_FILE=/run/secrets/trustserve-api-keys \
    "$image" >/dev/null 2>"$WORK/podman-run.log" || { cat "$WORK/podman-run.log" >&2; fail "podman run $image"; }
  ready=$(checks wait-ready "http://127.0.0.1:$port" --timeout 300) || fail "$name never became ready"
  record "$label: container start to /readyz 200" "$ready s (podman run to ready: $(since "$start") s)"
  checks check-server "http://127.0.0.1:$port" || fail "checks against $name"
  podman logs "$name" >"$WORK/$label.log" 2>&1
  checks check-multimodal "http://127.0.0.1:$port" --logs "$WORK/$label.log" "${@:3}" \
    || fail "multimodal checkpoints on $name"
  if [ "$image" = "$SLIM_IMAGE" ]; then
    checks check-runtime "http://127.0.0.1:$port" --runtime "$SLIM_RUNTIME" || fail "runtimes on $name"
  fi
  [ "$(podman exec "$name" id -u)" = 10001 ] || fail "$name does not run as uid 10001"
  podman healthcheck run "$name" || fail "HEALTHCHECK of $name"
  local health
  health=$(podman inspect --format '{{.State.Health.Status}}' "$name" 2>/dev/null \
    || podman inspect --format '{{.State.Healthcheck.Status}}' "$name")
  [ "$health" = healthy ] || fail "$name health is '$health'"
  echo "   HEALTHCHECK: $health"
  podman rm -f -v -t 10 "$name" >/dev/null  # -v: with the anonymous volumes of the image's VOLUMEs
}

# --- 5./6. compose stacks -------------------------------------------------------------------------------
compose_up() {  # project file services...: up -d, then every service's container must be running
  local project=$1 file=$2 services=("${@:3}") service state
  PROJECTS+=("$project|$file")
  podman-compose -p "$project" -f "$file" up -d "${services[@]}" >"$WORK/$project-up.log" 2>&1 || true
  for service in "${services[@]}"; do
    # podman-compose names a service's container <project>_<service>_1
    state=$(podman inspect --format '{{.State.Status}}' "${project}_${service}_1" 2>/dev/null || true)
    [ "$state" = running ] || { tail -30 "$WORK/$project-up.log" >&2; fail "$file: service $service is '${state:-absent}'"; }
  done
}

compose_down() {  # podman-compose down -v, then nothing of the project may be left
  local project=$1 file=$2 anonymous left
  # the anonymous volumes of the image's VOLUMEs: podman-compose's down removes the containers without them
  anonymous=$(project_containers "$project" | xargs -r podman inspect \
    --format '{{range .Mounts}}{{if eq .Type "volume"}}{{.Name}} {{end}}{{end}}' | tr ' ' '\n' | grep -E '^[0-9a-f]{64}$' || true)
  podman-compose -p "$project" -f "$file" down -v >"$WORK/$project-down.log" 2>&1 || true
  [ -z "$anonymous" ] || podman volume rm $anonymous >/dev/null
  podman network ls -q --filter "label=io.podman.compose.project=$project" | xargs -r podman network rm >/dev/null
  left=$(project_containers "$project")
  [ -z "$left" ] || fail "$file: containers left after down: $left"
  left=$(podman volume ls -q --filter "label=io.podman.compose.project=$project")
  [ -z "$left" ] || fail "$file: volumes left after down -v: $left"
}

run_monitoring_stack() {
  local project=${RUN_ID}-stack file=deploy/docker-compose.yml start ready
  TRUSTSERVE_PUBLISH_PORT=$(free_port) PROMETHEUS_PUBLISH_PORT=$(free_port)
  export TRUSTSERVE_PUBLISH_PORT PROMETHEUS_PUBLISH_PORT PROMETHEUS_IMAGE
  start=$(now)
  # Grafana has no image here (no registry, no Debian package): the stack runs without it
  compose_up "$project" "$file" trustserve prometheus
  ready=$(checks wait-ready "http://127.0.0.1:$TRUSTSERVE_PUBLISH_PORT" --timeout 300) \
    || fail "$file: trustserve never became ready"
  record "compose stack up to trustserve ready" "$(since "$start") s"
  checks check-server "http://127.0.0.1:$TRUSTSERVE_PUBLISH_PORT" || fail "$file: checks against trustserve"
  checks check-prometheus "http://127.0.0.1:$PROMETHEUS_PUBLISH_PORT" --target trustserve:8000 \
    --min-rules "$(grep -c -- '- alert:' deploy/prometheus/alerts.yml)" --timeout 120 \
    || fail "$file: Prometheus"
  compose_down "$project" "$file"
  record "compose stack (trustserve + Prometheus), up to down" "$(since "$start") s"
}

run_replicas_stack() {
  local project=${RUN_ID}-replicas file=deploy/docker-compose.replicas.yml start first second balancer
  TRUSTSERVE_PUBLISH_PORT=$(free_port) TRUSTSERVE_1_PUBLISH_PORT=$(free_port) TRUSTSERVE_2_PUBLISH_PORT=$(free_port)
  export TRUSTSERVE_PUBLISH_PORT TRUSTSERVE_1_PUBLISH_PORT TRUSTSERVE_2_PUBLISH_PORT POSTGRES_IMAGE NGINX_IMAGE
  first=http://127.0.0.1:$TRUSTSERVE_1_PUBLISH_PORT second=http://127.0.0.1:$TRUSTSERVE_2_PUBLISH_PORT
  balancer=http://127.0.0.1:$TRUSTSERVE_PUBLISH_PORT
  start=$(now)
  compose_up "$project" "$file" postgres trustserve-1 trustserve-2 nginx
  checks wait-ready "$first" --timeout 300 >/dev/null || fail "$file: trustserve-1 never became ready"
  checks wait-ready "$second" --timeout 300 >/dev/null || fail "$file: trustserve-2 never became ready"
  checks wait-ready "$balancer" --timeout 60 >/dev/null || fail "$file: nginx does not reach the replicas"
  record "replicas stack up to both replicas ready" "$(since "$start") s"
  checks check-replicas "$first" "$second" --balancer "$balancer" || fail "$file: label sets across replicas"
  compose_down "$project" "$file"
  record "replicas stack (PostgreSQL + 2 replicas + nginx), up to down" "$(since "$start") s"
}

# --------------------------------------------------------------------------------------------------------
log "podman from Debian"
start=$(now); install_packages; record "packages" "$(since "$start") s"
log "base images without a registry"
build_debian_image
build_debian_images
log "project image ($PROJECT_IMAGE)"
build_image runtime "$PROJECT_IMAGE" deps builder runtime-user
check_torch_build  # the CUDA variant when torch is a CUDA build: it runs on CPU here, no GPU in CI
log "slim image ($SLIM_IMAGE): exported models, no torch"
build_image slim "$SLIM_IMAGE" export serving-deps
check_slim_image
generate_keys
log "one container of the full image"
run_single_container "$PROJECT_IMAGE" full
log "one container of the slim image"
# the multimodal demo's image features still need torch (EfficientNet-Lite0): skipped, and only so
run_single_container "$SLIM_IMAGE" slim --tolerate-torch-skip
log "compose: trustserve + Prometheus ($SLIM_IMAGE)"
run_monitoring_stack
log "compose: PostgreSQL + 2 replicas + nginx ($SLIM_IMAGE)"
run_replicas_stack
record "containers total" "$(($(date +%s) - STARTED)) s"
log "container timings (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
printf '%s\n' "${TIMINGS[@]}" | column -t -s '|'
