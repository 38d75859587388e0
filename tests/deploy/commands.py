"""The deploy commands docs/DEPLOY.md shows, as the tests run them (test_docs.py checks the doc quotes
each one verbatim). Run from the repository root."""

from __future__ import annotations

PROMTOOL_CHECK_CONFIG = "promtool check config deploy/prometheus/prometheus.yml"
PROMTOOL_TEST_RULES = "promtool test rules deploy/prometheus/alerts_test.yml"
KUSTOMIZE_BUILD = "kubectl kustomize deploy/k8s"
KUBECTL_APPLY = "kubectl apply -k deploy/k8s"
COMPOSE_UP = "docker compose -f deploy/docker-compose.yml up"
COMPOSE_GPU_UP = "docker compose -f deploy/docker-compose.yml -f deploy/docker-compose.gpu.yml up --build"
DOCKER_BUILD_TEST = "docker build --target test ."
HADOLINT = "hadolint Dockerfile"
CONTAINERS_CHECK = "bash .ci/containers.sh"
