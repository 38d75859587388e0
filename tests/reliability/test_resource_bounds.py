"""Memory bounds a hostile upload must not break, measured with tracemalloc around one request in-process
(exact for the Python allocations a decompressor makes)."""

from __future__ import annotations

import tracemalloc

from tests.reliability.images import gzip_bomb

BOMB_EXPANDED = 256 * 2**20  # a ~250 KB upload that inflates to 256 MB
PEAK_BOUND = 96 * 2**20  # the import limit (64 MiB) plus slack, far below the 256 MB it inflates to


def test_label_set_import_gzip_bomb_is_refused_without_inflating_it(module_client) -> None:  # type: ignore[no-untyped-def]
    bomb = gzip_bomb(BOMB_EXPANDED)
    assert len(bomb) < 1_000_000
    tracemalloc.start()
    try:
        r = module_client.post(
            "/v1/label-sets/import", content=bomb, headers={"content-type": "application/gzip"}
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert 400 <= r.status_code < 500, r.text
    assert peak < PEAK_BOUND, f"importing a {len(bomb)}-byte gzip bomb allocated {peak / 2**20:.0f} MB"
