"""The hostile-input corpus against the real app (in-process, tiny model): every case answers a clear 4xx
(or, for odd but valid images, 200), never a 5xx; a normal request right after each one succeeds; and
replaying the corpus does not grow the process's memory."""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import httpx
import pytest

from tests.reliability.conftest import FULL, LIVE_ADMIN_KEY, rss_bytes
from tests.reliability.corpus import Case, build_corpus, prepare_target, run_case, run_corpus, summarise

# Defects found by this corpus in files owned by others; each is a strict xfail so that the fix turns it
# into a failure here until the marker is removed (fixes are in docs/RELIABILITY.md).
KNOWN_DEFECTS: dict[str, str] = {}  # case name -> reason, as strict xfails (none open)

CORPUS = build_corpus()


def _param(case: Case) -> object:
    marks = []
    if case.name in KNOWN_DEFECTS:
        marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_DEFECTS[case.name]))
    return pytest.param(case, id=case.name, marks=marks)


@pytest.fixture(scope="module")
def corpus_client(module_client):  # type: ignore[no-untyped-def]
    prepare_target(module_client)
    return module_client


def test_corpus_is_large_and_covers_every_endpoint(corpus_client) -> None:  # type: ignore[no-untyped-def]
    assert len(CORPUS) >= 50
    assert len({c.name for c in CORPUS}) == len(CORPUS), "case names must be unique"
    covered = {c.endpoint for c in CORPUS}
    paths = corpus_client.app.openapi()["paths"]
    operations = {
        f"{m.upper()} {p}".replace("{label_set_id}", "{id}") for p, ops in paths.items() for m in ops
    }
    missing = operations - covered
    assert not missing, f"no hostile case for {sorted(missing)}"


@pytest.mark.parametrize("case", [_param(c) for c in CORPUS])
def test_hostile_case(corpus_client, case: Case) -> None:  # type: ignore[no-untyped-def]
    outcome = run_case(corpus_client, case)
    assert outcome.ok, f"{case.name} -> {outcome.status}: {outcome.problems}"


def test_replaying_the_corpus_does_not_grow_memory(corpus_client) -> None:  # type: ignore[no-untyped-def]
    """Three rounds of every other cheap case (the first warms caches and allocator pools): the resident set
    after round 3 is within 48 MB of round 1."""
    cheap = [c for c in CORPUS if "bomb" not in c.name and "huge JSON" not in c.name][::2]
    sizes = []
    for _ in range(3):
        outcomes = run_corpus(corpus_client, cheap, followup=False)
        assert summarise(outcomes)["answered_5xx"] <= len(KNOWN_DEFECTS)
        gc.collect()
        sizes.append(rss_bytes())
    growth = sizes[-1] - sizes[0]
    _report("in_process", {**summarise(outcomes), "rss_mb": [round(x / 2**20, 1) for x in sizes]})
    assert growth < 48 * 2**20, f"RSS grew by {growth / 2**20:.1f} MB over 2 replays: {sizes}"


def _report(name: str, figures: dict[str, object]) -> None:
    folder = os.environ.get("TRUSTSERVE_RELIABILITY_REPORT")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        path = Path(folder) / "corpus.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        data[name] = figures
        path.write_text(json.dumps(data, indent=2))


ROUNDS_LIVE = int(os.environ.get("TRUSTSERVE_CORPUS_ROUNDS", "5"))


@pytest.mark.skipif(not FULL, reason="full version only (TRUSTSERVE_FULL_RELIABILITY=1)")
def test_corpus_over_http_against_a_live_server(live_server) -> None:  # type: ignore[no-untyped-def]
    """The whole corpus, 5 rounds, over real HTTP (admin key): no 5xx, no dropped connection, each next
    request served, and the server process's memory flat after the first round."""
    headers = {"Authorization": f"Bearer {LIVE_ADMIN_KEY}"}
    pid = live_server.process.pid
    totals: dict[str, int] = {}
    rss = []
    with httpx.Client(base_url=live_server.url, headers=headers, timeout=120) as client:
        prepare_target(client)
        for _ in range(ROUNDS_LIVE):
            outcomes = run_corpus(client, CORPUS)
            for key, value in summarise(outcomes).items():
                totals[key] = totals.get(key, 0) + value
            rss.append(rss_bytes(pid))
            unexpected = [o for o in outcomes if not o.ok and o.case not in KNOWN_DEFECTS]
            assert not unexpected, [(o.case, o.status, o.problems) for o in unexpected[:5]]
    totals["endpoints"] = len({c.endpoint for c in CORPUS})
    _report("live_server", {**totals, "rounds": ROUNDS_LIVE, "rss_mb": [round(x / 2**20, 1) for x in rss]})
    assert rss[-1] - rss[0] < 64 * 2**20, rss
