"""Deploy files read the way their tools read them: compose files with interpolation, kustomize output."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]

_COMPOSE_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<default>[^}]*))?\}")


def interpolate_compose(text: str, env: dict[str, str] | None = None) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR-default}`` substitution (compose-spec
    "Interpolation"), with ``env`` standing in for the shell environment."""
    env = env or {}

    def substitute(match: re.Match[str]) -> str:
        name, op, default = match["name"], match["op"], match["default"] or ""
        if op == ":-":
            return env.get(name) or default
        if op == "-":
            return env.get(name, default)
        if op in {":?", "?"}:
            raise ValueError(f"required variable {name} in a compose file: {default}")
        return env.get(name, "")

    return _COMPOSE_VARIABLE.sub(substitute, text.replace("$$", "\0")).replace("\0", "$")


def load_compose(path: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    return yaml.safe_load(interpolate_compose(path.read_text(), env))


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize <directory>`` parsed into its documents."""
    result = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(documents: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    kinds: dict[str, list[dict[str, Any]]] = {}
    for doc in documents:
        kinds.setdefault(doc["kind"], []).append(doc)
    return kinds
