"""The OpenAPI document is the public contract: any change must be deliberate.

Regenerate after an intended API change with:
    TRUSTSERVE_UPDATE_OPENAPI_SNAPSHOT=1 python3 -m pytest tests/api/test_openapi_snapshot.py
and commit tests/api/openapi.snapshot.json with the change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from app.api.app import create_app

SNAPSHOT = Path(__file__).with_name("openapi.snapshot.json")


def test_openapi_matches_snapshot(settings_factory) -> None:  # type: ignore[no-untyped-def]
    document = create_app(settings_factory()).openapi()
    rendered = json.dumps(document, indent=2, sort_keys=True) + "\n"
    if os.environ.get("TRUSTSERVE_UPDATE_OPENAPI_SNAPSHOT") == "1":
        SNAPSHOT.write_text(rendered)
    assert SNAPSHOT.exists(), "no snapshot yet: run with TRUSTSERVE_UPDATE_OPENAPI_SNAPSHOT=1"
    expected = json.loads(SNAPSHOT.read_text())
    assert sorted(document["paths"]) == sorted(expected["paths"]), "endpoints added or removed"
    assert document == expected, "the API changed: review the diff, then regenerate the snapshot"


def test_every_operation_documents_its_errors(settings_factory) -> None:  # type: ignore[no-untyped-def]
    document = create_app(settings_factory()).openapi()
    for path, operations in document["paths"].items():
        for method, op in operations.items():
            assert op.get("summary") or op.get("description"), f"{method.upper()} {path} has no summary"
