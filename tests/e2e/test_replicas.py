"""Several real server processes (tiny random-weight model) sharing label sets through one PostgreSQL:
a change made on one replica is served by the others within the staleness bound, concurrent writers on
two replicas never lose an update (a stale one gets 409), a replica restarted from nothing rebuilds its
cache from the database, and a database killed in the middle of a write leaves no torn label set while
classify keeps answering from memory and writes fail with 503."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.labelsets.conftest import colour_image
from tests.support.live_server import LiveServer, tiny_server
from tests.support.postgres import ThrowawayCluster, ci_database_url, fresh_schema, postgres_bindir

# Each test starts real server processes (about 30 s on a loaded 2-core box): slow, so CI runs them with
# ``pytest -m "postgres and slow"`` after the default run.
pytestmark = [
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.skipif(ci_database_url() is None, reason="TRUSTSERVE_TEST_DATABASE_URL is not set"),
]

LABELS = ["red", "green", "blue"]
# While notifications flow, a change is visible on every replica after one NOTIFY round trip plus one
# load and index rebuild; the periodic version check (every 5 s) only matters when one is missed.
STALENESS_BOUND_S = 1.0


def start_replicas(models_dir: Path, root: Path, url: str, names: list[str]) -> list[LiveServer]:
    """Start the replicas together (their migrations race on purpose) and wait until all are ready."""
    servers = [
        tiny_server(
            models_dir,
            root / f"store-{name}",  # unused with a database URL: proves nothing is shared on disk
            log_path=root / f"{name}.log",
            env={"TRUSTSERVE_DATABASE_URL": url, "TRUSTSERVE_WARMUP": "false"},
        ).start()
        for name in names
    ]
    for server in servers:
        server.wait_ready(120)
    return servers


def png(name: str, seed: int) -> bytes:
    buf = io.BytesIO()
    colour_image(name, seed).save(buf, "PNG")
    return buf.getvalue()


def add_images(url: str, per_class: int = 2, seed: int = 0, **params: object) -> httpx.Response:
    files, labels = [], []
    for i in range(per_class * len(LABELS)):
        label = LABELS[i % len(LABELS)]
        files.append(("images", (f"{i}.png", png(label, seed + i), "image/png")))
        labels.append(label)
    return httpx.post(
        f"{url}/v1/label-sets/colours/images",
        files=files,
        data={"labels": labels},
        params=params,
        timeout=30,
    )


def classify(url: str, seed: int = 99) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/classify",
        files=[("images", ("x.png", png("red", seed), "image/png"))],
        data={"label_set": "colours"},
        timeout=30,
    )


def version_on(url: str) -> int | None:
    r = httpx.get(f"{url}/v1/label-sets/colours", timeout=5)
    return r.json()["version"] if r.status_code == 200 else None


def wait_until(predicate: Callable[[], bool], timeout_s: float) -> float:
    """Seconds until ``predicate()`` held; fails after ``timeout_s``."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout_s, f"not reached within {timeout_s} s"
        time.sleep(0.005)
    return time.monotonic() - started


# ---- two replicas on the CI database -----------------------------------------------------------


@pytest.fixture(scope="module")
def replicas(
    tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[list[LiveServer], str, Path]]:
    root = tmp_path_factory.mktemp("replicas")
    with fresh_schema(ci_database_url()) as url:  # type: ignore[arg-type]
        servers = start_replicas(tiny_models_dir, root, url, ["a", "b"])
        try:
            yield servers, url, root
        finally:
            for server in servers:
                server.stop()


def test_change_on_one_replica_is_served_by_the_other_within_the_bound(replicas) -> None:  # type: ignore[no-untyped-def]
    (a, b), _, _ = replicas
    created = httpx.post(f"{a.url}/v1/label-sets", json={"id": "colours", "labels": LABELS}, timeout=30)
    assert created.status_code == 201, created.text
    assert wait_until(lambda: version_on(b.url) == 1, STALENESS_BOUND_S) < STALENESS_BOUND_S
    added = add_images(a.url)
    assert added.status_code == 200, added.text
    version = added.json()["version"]
    lag = wait_until(lambda: version_on(b.url) == version, STALENESS_BOUND_S)
    assert lag < STALENESS_BOUND_S
    on_b, on_a = classify(b.url).json(), classify(a.url).json()
    assert on_b["label_set"] == {"id": "colours", "version": version}
    assert on_b["results"][0]["trust"]["classes_with_prototypes"] == len(LABELS)
    assert on_b["results"][0]["scores"] == on_a["results"][0]["scores"]  # same prototypes, same index


def test_concurrent_writers_on_two_replicas_one_wins_the_other_gets_409(replicas) -> None:  # type: ignore[no-untyped-def]
    (a, b), _, _ = replicas
    version = version_on(a.url)
    assert version is not None
    wait_until(lambda: version_on(b.url) == version, STALENESS_BOUND_S)
    barrier = threading.Barrier(2)
    answers: dict[str, httpx.Response] = {}

    def patch(name: str, url: str) -> None:
        barrier.wait()
        answers[name] = httpx.patch(
            f"{url}/v1/label-sets/colours",
            json={"description": f"written by {name}"},
            params={"expected_version": version},
            timeout=30,
        )

    threads = [threading.Thread(target=patch, args=(n, s.url)) for n, s in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(r.status_code for r in answers.values())
    assert statuses == [200, 409], {n: r.text for n, r in answers.items()}
    winner = next(n for n, r in answers.items() if r.status_code == 200)
    loser = answers["b" if winner == "a" else "a"].json()["error"]
    assert loser["code"] == "version_conflict"
    for server in (a, b):
        wait_until(lambda s=server: version_on(s.url) == version + 1, STALENESS_BOUND_S)
        got = httpx.get(f"{server.url}/v1/label-sets/colours", timeout=5).json()
        assert got["description"] == f"written by {winner}"


def support_counts(url: str) -> dict[str, int]:
    got = httpx.get(f"{url}/v1/label-sets/colours", timeout=5).json()
    return {c["label"]: c["support_images"] for c in got["classes"]}


def test_no_update_is_lost_when_both_replicas_write_without_preconditions(replicas) -> None:  # type: ignore[no-untyped-def]
    """Each request adds one image per class; every acknowledged request must be in the final counts."""
    (a, b), _, _ = replicas
    start_version, start_counts = version_on(a.url), support_counts(a.url)
    acknowledged: list[int] = []
    statuses: list[int] = []

    def writer(url: str, seed: int) -> None:
        for i in range(3):
            r = add_images(url, per_class=1, seed=seed + 10 * i)
            statuses.append(r.status_code)
            if r.status_code == 200:
                acknowledged.append(r.json()["version"])

    threads = [threading.Thread(target=writer, args=(s.url, 1000 * k)) for k, s in enumerate((a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(statuses) <= {200, 409} and acknowledged
    assert len(set(acknowledged)) == len(acknowledged)  # no two writes produced the same version
    final = start_version + len(acknowledged)  # type: ignore[operator]
    for server in (a, b):
        wait_until(lambda s=server: version_on(s.url) == final, STALENESS_BOUND_S)
        counts = support_counts(server.url)
        assert counts == {label: start_counts[label] + len(acknowledged) for label in LABELS}


def test_restarted_replica_rebuilds_its_cache_from_the_database(replicas, tiny_models_dir: Path) -> None:  # type: ignore[no-untyped-def]
    (a, b), url, root = replicas
    b.kill()  # SIGKILL: nothing flushed, nothing handed over
    (c,) = start_replicas(tiny_models_dir, root, url, ["c"])
    try:
        assert version_on(c.url) == version_on(a.url)
        on_c, on_a = classify(c.url, seed=5).json(), classify(a.url, seed=5).json()
        assert on_c["label_set"] == on_a["label_set"]
        assert on_c["results"][0]["scores"] == on_a["results"][0]["scores"]
    finally:
        c.stop()


# ---- a private database we can kill -----------------------------------------------------------


@pytest.fixture()
def cluster() -> Iterator[ThrowawayCluster]:
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries are not installed")
    c = ThrowawayCluster(bindir)
    c.start()
    yield c
    c.remove()


def test_database_killed_mid_write_then_restarted(
    cluster: ThrowawayCluster, tiny_models_dir: Path, tmp_path: Path
) -> None:
    """Replica A is inside its write transaction (held at the blobs insert by a table lock) when the
    database dies. A answers 503; both replicas go unready but keep classifying from memory; writes
    fail with 503; after the restart both are ready again and serve the old version, complete."""
    with fresh_schema(cluster.url) as url:
        a, b = start_replicas(tiny_models_dir, tmp_path, url, ["a", "b"])
        try:
            assert httpx.post(f"{a.url}/v1/label-sets", json={"id": "colours", "labels": LABELS}).is_success
            assert add_images(a.url).status_code == 200
            wait_until(lambda: version_on(b.url) == 2, STALENESS_BOUND_S)
            before = classify(b.url).json()["results"][0]["scores"]

            blocker = psycopg.connect(url)
            blocker.execute("LOCK TABLE label_set_blobs IN ACCESS EXCLUSIVE MODE")
            answer: list[httpx.Response] = []
            writer = threading.Thread(target=lambda: answer.append(add_images(a.url, seed=50)))
            writer.start()
            wait_until(
                lambda: (
                    blocker.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'trustserve' "
                        "AND wait_event_type = 'Lock'"
                    ).fetchone()[0]  # type: ignore[index]
                    > 0
                ),
                20,
            )
            cluster.crash()
            writer.join(30)
            blocker.close()
            assert answer[0].status_code == 503, answer[0].text
            assert answer[0].json()["error"]["code"] == "label_store_unavailable"

            for server in (a, b):  # unready, yet classify still answers from the in-memory views
                wait_until(lambda s=server: httpx.get(f"{s.url}/readyz").status_code == 503, 5)
                r = classify(server.url)
                assert r.status_code == 200 and r.json()["label_set"]["version"] == 2
            assert classify(b.url).json()["results"][0]["scores"] == before
            refused = add_images(b.url, seed=70)
            assert refused.status_code == 503 and refused.headers.get("retry-after")

            cluster.start()
            for server in (a, b):
                wait_until(lambda s=server: httpx.get(f"{s.url}/readyz").status_code == 200, 15)
                assert version_on(server.url) == 2  # the interrupted write left nothing behind
            retried = add_images(a.url, seed=50)
            assert retried.status_code == 200 and retried.json()["version"] == 3
            wait_until(lambda: version_on(b.url) == 3, STALENESS_BOUND_S)
        finally:
            a.stop()
            b.stop()
