"""The Python client against the real app (tiny model): classify, label-set life cycle, errors, async."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.client import AsyncTrustServeClient, TrustServeClient, TrustServeError
from tests.conftest import image_bytes
from tests.support.live_server import LiveServer, tiny_server


@pytest.fixture(scope="module")
def server(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("client")
    with tiny_server(tiny_models_dir, root / "store", log_path=root / "server.log") as srv:
        yield srv


def test_sync_client_full_label_set_cycle(server: LiveServer) -> None:
    ts = TrustServeClient(server.url)
    assert ts.ready()
    answer = ts.classify([image_bytes()], ["cat", "dog"], top_k=1)
    assert answer["results"][0]["prediction"]["label"] in {"cat", "dog"}
    created = ts.create_label_set("pets", ["cat", "dog"])
    assert created["id"] == "pets" and created["calibrated"] is False
    ts.add_support_images("pets", "cat", [image_bytes(seed=1), image_bytes(seed=2)])
    ts.add_support_images("pets", "dog", [image_bytes(seed=3)])
    by_set = ts.classify([image_bytes(seed=4)], label_set="pets")
    result = by_set["results"][0]
    assert by_set["label_set"]["id"] == "pets"
    assert result["scores"]["trustvlm"] is not None and result["trust"]["prototypes_for_prediction"]
    archive = ts.export_label_set("pets")
    assert ts.import_label_set(archive, new_id="pets-copy")["labels"] == ["cat", "dog"]
    assert {s["id"] for s in ts.list_label_sets()["label_sets"]} == {"pets", "pets-copy"}
    ts.delete_label_set("pets-copy")
    with pytest.raises(TrustServeError) as info:
        ts.get_label_set("pets-copy")
    assert info.value.status == 404 and info.value.code


def test_async_client_classifies_concurrently(server: LiveServer) -> None:
    async def run() -> list[dict]:
        async with AsyncTrustServeClient(server.url) as ts:
            return await asyncio.gather(*(ts.classify([image_bytes(seed=i)], ["a", "b"]) for i in range(4)))

    answers = asyncio.run(run())
    assert len(answers) == 4 and all(a["model"] == "tiny-clip" for a in answers)
