"""docs/DEPLOY.md shows the commands the deploy tests run (tests/deploy/commands.py), and every path,
build target, build argument and setting its commands name exists."""

from __future__ import annotations

import itertools
import re
import shlex

import pytest

from app.config import Settings
from tests.deploy import commands
from tests.deploy.manifests import REPO_ROOT

DEPLOY_DOC = REPO_ROOT / "docs/DEPLOY.md"
K8S_README = REPO_ROOT / "deploy/k8s/README.md"
DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text()
COMMANDS = {name: value for name, value in vars(commands).items() if name.isupper()}


def shell_lines(markdown: str) -> list[str]:
    """Command lines of the ```bash blocks (comments and blank lines dropped, env prefixes kept)."""
    blocks = re.findall(r"```bash\n(.*?)```", markdown, re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_doc_shows_the_tested_command(name: str) -> None:
    lines = shell_lines(DEPLOY_DOC.read_text())
    assert any(COMMANDS[name] in line for line in lines), f"docs/DEPLOY.md lacks `{COMMANDS[name]}`"


def test_kubectl_commands_name_the_same_folder() -> None:
    assert shlex.split(commands.KUBECTL_APPLY)[-1] == shlex.split(commands.KUSTOMIZE_BUILD)[-1]


def test_paths_targets_build_args_and_settings_exist() -> None:
    stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", DOCKERFILE, re.M))
    build_args = set(re.findall(r"^ARG\s+(\w+)", DOCKERFILE, re.M))
    for line in shell_lines(DEPLOY_DOC.read_text()):
        words = shlex.split(line)
        for flag, value in itertools.pairwise(words):
            if flag in {"-f", "-k", "kustomize"}:
                assert (REPO_ROOT / value).exists(), f"{line}: {value} does not exist"
            if flag == "--target":
                assert value in stages, f"{line}: no Dockerfile stage {value}"
            if flag == "--build-arg":
                assert value.split("=")[0] in build_args, f"{line}: no ARG {value}"
    for doc in (DEPLOY_DOC, K8S_README):
        for setting in set(re.findall(r"TRUSTSERVE_([A-Z_]+[A-Z])", doc.read_text())):
            if setting.endswith("PUBLISH_PORT") or setting in {"IMAGE_TAG", "BUILD_TARGET"}:  # compose's
                continue
            assert setting.lower() in Settings.model_fields, f"{doc.name}: TRUSTSERVE_{setting}"


def test_k8s_readme_overlay_is_the_tested_one() -> None:
    """The YAML in deploy/k8s/README.md is what test_kubernetes.test_documented_key_replacement builds."""
    readme = K8S_README.read_text()
    for line in (
        "secretGenerator:",
        "  - name: trustserve-api-keys",
        "    behavior: replace",
        "      - keys=api-keys.txt",
    ):
        assert line in readme
