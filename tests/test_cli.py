"""The ``trustserve`` command line: a dataset from a missing optional package is refused in one line that
says what to install (no traceback), before any model is loaded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.errors import MissingDependencyError, require_module
from app.trust.datasets import DATASET_PACKAGES, load_dataset, require_dataset_packages

ROOT = Path(__file__).resolve().parents[1]


def _trustserve_without(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``trustserve ARGS`` in a fresh interpreter where ``module`` cannot be imported."""
    code = (
        f"import sys; sys.modules[{module!r}] = None; sys.argv = ['trustserve', *{list(args)!r}]; "
        "from app.cli import main; main()"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env
    )


@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("animal_mnist", ["eval", "--dataset", "animal-mnist", "--no-cache"]),
        ("animal_mnist", ["calibrate", "animals", "animal-mnist", "--target-coverage", "0.8"]),
        ("conformal_clip_data", ["eval", "--dataset", "conformal-clip-data", "--no-cache"]),
    ],
)
def test_missing_dataset_package_is_one_line_saying_what_to_install(module: str, args: list[str]) -> None:
    result = _trustserve_without(module, *args)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    [install] = [install for pairs in DATASET_PACKAGES.values() for m, install in pairs if m == module]
    assert lines[0].startswith("error: the dataset") and install in lines[0]


def test_require_module_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "animal_mnist", None)
    with pytest.raises(MissingDependencyError) as err:
        require_dataset_packages("animal-mnist")
    assert "animal-mnist==0.4" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(MissingDependencyError):
        load_dataset("animal-mnist", "test")
    assert require_dataset_packages("digits") == []  # scikit-learn's: always there
    assert require_module("json", feature="x", install="y").dumps([1]) == "[1]"
