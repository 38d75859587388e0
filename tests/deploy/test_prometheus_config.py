"""promtool on the deployed Prometheus config and on the alert rules' unit tests."""

from __future__ import annotations

import shlex
import shutil
import subprocess

import pytest

from tests.deploy.commands import PROMTOOL_CHECK_CONFIG, PROMTOOL_TEST_RULES
from tests.deploy.manifests import REPO_ROOT
from tests.deploy.promql import alert_queries

pytestmark = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")


def run(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(shlex.split(command), cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


def test_config_is_valid() -> None:
    result = run(PROMTOOL_CHECK_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(list(alert_queries()))} rules found" in result.stdout + result.stderr


def test_alert_rules_fire_as_their_unit_tests_expect() -> None:
    result = run(PROMTOOL_TEST_RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr
