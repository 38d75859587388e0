"""Schema fuzzing with schemathesis against the live server's own OpenAPI document: for every operation,
generated valid and invalid requests never get a 5xx, and every answer conforms to the documented schema.

Quick by default (a few examples per operation); ``TRUSTSERVE_FULL_RELIABILITY=1`` runs many more
(``benchmarks/reliability/run_all.py``). Requests carry the admin key, so every route is reached."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from tests.reliability.conftest import FULL, LIVE_ADMIN_KEY

MAX_EXAMPLES = int(os.environ.get("TRUSTSERVE_FUZZ_EXAMPLES", "200" if FULL else "12"))
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
EXAMPLES_RUN: dict[str, int] = {}  # operation -> examples sent (read by the benchmark script)
FAILED_EXAMPLES: dict[str, int] = {}  # operation -> examples that failed a check (shrinking included)


@pytest.fixture(scope="module")
def live_schema(live_server):  # type: ignore[no-untyped-def]
    # the API docs need a key when keys are configured (TRUSTSERVE_PUBLIC_DOCS is off)
    auth = {"Authorization": f"Bearer {LIVE_ADMIN_KEY}"}
    yield schemathesis.openapi.from_url(f"{live_server.url}/openapi.json", headers=auth)
    folder = os.environ.get("TRUSTSERVE_RELIABILITY_REPORT")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        figures = {
            "max_examples": MAX_EXAMPLES,
            "operations": len(EXAMPLES_RUN),
            "examples": EXAMPLES_RUN,
            "failed_examples": FAILED_EXAMPLES,
        }
        (Path(folder) / "fuzz.json").write_text(json.dumps(figures, indent=2))


schema = schemathesis.pytest.from_fixture("live_schema")


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=not FULL,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_no_server_errors_and_schema_conformance(case, live_server) -> None:  # type: ignore[no-untyped-def]
    EXAMPLES_RUN[case.operation.label] = EXAMPLES_RUN.get(case.operation.label, 0) + 1
    try:
        case.call_and_validate(
            base_url=live_server.url,
            headers={"Authorization": f"Bearer {LIVE_ADMIN_KEY}"},
            checks=CHECKS,
            timeout=60,
        )
    except BaseException:  # schemathesis raises an exception group
        FAILED_EXAMPLES[case.operation.label] = FAILED_EXAMPLES.get(case.operation.label, 0) + 1
        raise
