"""PostgresStore against a real PostgreSQL: round trips, optimistic concurrency between store instances
(as between replicas), migrations under concurrent start-up, corruption detection, and a database killed
mid-write (never a torn label set)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest

from app.labelsets.migrations import Migration, MigrationError, apply_migrations, discover
from app.labelsets.models import CalibrationRecord, LabelSetMeta
from app.labelsets.postgres_store import PostgresStore, StoreUnavailableError
from app.labelsets.store import (
    CorruptEntryError,
    LabelSetNotFoundError,
    StoredLabelSet,
    VersionConflictError,
)
from tests.support.postgres import ThrowawayCluster, ci_database_url, fresh_schema, postgres_bindir

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(ci_database_url() is None, reason="TRUSTSERVE_TEST_DATABASE_URL is not set"),
]


@pytest.fixture()
def schema_url() -> Iterator[str]:
    with fresh_schema(ci_database_url()) as url:  # type: ignore[arg-type]
        yield url


@pytest.fixture()
def store(schema_url: str) -> Iterator[PostgresStore]:
    s = PostgresStore(schema_url, timeout_s=2.0)
    yield s
    s.close()


def make_record(label_set_id: str = "animals", version: int = 1, n: int = 3, fill: float = 1.0):
    meta = LabelSetMeta(
        id=label_set_id,
        version=version,
        labels=[f"class-{i}" for i in range(n)],
        templates=["a photo of a {}."],
        model="tiny-clip",
        aux_encoder="vlm",
        embedding_dim=4,
    )
    arrays = {
        "text_embeddings": np.full((n, 4), fill, np.float32),
        "prototype_counts": np.arange(n, dtype=np.int64),
    }
    return StoredLabelSet(meta, arrays, {"prototype_index": f"faiss-v{version}".encode()})


def next_record(record: StoredLabelSet, fill: float) -> StoredLabelSet:
    new = make_record(record.meta.id, record.meta.version + 1, len(record.meta.labels), fill)
    return new


def test_round_trip_keeps_meta_arrays_blobs_and_calibration(store: PostgresStore) -> None:
    record = make_record()
    record.meta.calibration = CalibrationRecord(
        rule="target_risk",
        score="trustvlm",
        threshold=0.25,
        target=0.1,
        delta=0.05,
        guarantee="risk <= 0.1 with probability 0.95",
        coverage=0.5,
        risk=0.05,
        risk_upper_bound=0.09,
        n=400,
        alpha=1.0,
        visual_temperature=0.01,
        label_set_version=1,
    )
    store.save(record, expected_version=0)
    loaded = store.load("animals")
    assert loaded.meta == record.meta
    assert loaded.blobs == record.blobs
    assert set(loaded.arrays) == set(record.arrays)
    for name, array in record.arrays.items():
        assert loaded.arrays[name].dtype == array.dtype
        np.testing.assert_array_equal(loaded.arrays[name], array)
    assert store.list_ids() == ["animals"]
    assert store.current_version("animals") == 1
    assert store.versions() == {"animals": 1}


def test_missing_and_invalid_ids(store: PostgresStore) -> None:
    with pytest.raises(LabelSetNotFoundError):
        store.load("nope")
    with pytest.raises(LabelSetNotFoundError):
        store.load("../etc/passwd")
    assert store.current_version("nope") == 0
    with pytest.raises(LabelSetNotFoundError):
        store.delete("nope")


def test_record_version_must_follow_expected_version(store: PostgresStore) -> None:
    with pytest.raises(ValueError, match="expected_version"):
        store.save(make_record(version=2), expected_version=0)


def test_stale_writer_gets_conflict_and_nothing_is_lost(schema_url: str, store: PostgresStore) -> None:
    other = PostgresStore(schema_url)  # a second replica
    try:
        v1 = make_record()
        store.save(v1, 0)
        store.save(next_record(v1, 2.0), expected_version=1)  # replica A moves to v2
        with pytest.raises(VersionConflictError) as info:
            other.save(next_record(v1, 3.0), expected_version=1)  # replica B still thinks v1
        assert (info.value.expected, info.value.current) == (1, 2)
        assert store.load("animals").arrays["text_embeddings"][0, 0] == 2.0
        with pytest.raises(VersionConflictError):
            other.save(make_record(), expected_version=0)  # create over an existing id
    finally:
        other.close()


def test_concurrent_writers_exactly_one_wins(schema_url: str, store: PostgresStore) -> None:
    v1 = make_record()
    store.save(v1, 0)
    stores = [PostgresStore(schema_url) for _ in range(4)]
    outcomes: list[str] = []
    barrier = threading.Barrier(len(stores))

    def write(s: PostgresStore, fill: float) -> None:
        barrier.wait()
        try:
            s.save(next_record(v1, fill), expected_version=1)
            outcomes.append(f"won:{fill}")
        except VersionConflictError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=write, args=(s, 10.0 + i)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    winners = [o for o in outcomes if o.startswith("won")]
    assert len(winners) == 1 and outcomes.count("conflict") == 3
    assert store.load("animals").arrays["text_embeddings"][0, 0] == float(winners[0].split(":")[1])


def test_concurrent_creators_exactly_one_wins(schema_url: str, store: PostgresStore) -> None:
    stores = [PostgresStore(schema_url) for _ in range(3)]
    outcomes: list[str] = []
    barrier = threading.Barrier(len(stores))

    def create(s: PostgresStore, fill: float) -> None:
        barrier.wait()
        try:
            s.save(make_record(fill=fill), expected_version=0)
            outcomes.append("won")
        except VersionConflictError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=create, args=(s, float(i))) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert sorted(outcomes) == ["conflict", "conflict", "won"]
    assert store.current_version("animals") == 1


def test_old_versions_are_pruned_to_keep_versions(schema_url: str) -> None:
    store = PostgresStore(schema_url, keep_versions=2)
    try:
        record = make_record()
        store.save(record, 0)
        for _ in range(4):
            record = next_record(record, float(record.meta.version + 1))
            store.save(record, record.meta.version - 1)
        with psycopg.connect(schema_url) as conn:
            kept = conn.execute("SELECT version FROM label_set_versions ORDER BY version").fetchall()
            blobs = conn.execute("SELECT DISTINCT version FROM label_set_blobs ORDER BY version").fetchall()
        assert [v for (v,) in kept] == [4, 5]
        assert [v for (v,) in blobs] == [4, 5]
        assert store.load("animals").meta.version == 5
    finally:
        store.close()


def test_delete_checks_expected_version_and_allows_recreate(store: PostgresStore) -> None:
    store.save(make_record(), 0)
    with pytest.raises(VersionConflictError):
        store.delete("animals", expected_version=7)
    store.delete("animals", expected_version=1)
    assert store.list_ids() == []
    store.save(make_record(fill=5.0), 0)  # the id is free again, history gone with it
    assert store.load("animals").arrays["text_embeddings"][0, 0] == 5.0


def test_tampered_rows_are_reported_as_corrupt(schema_url: str, store: PostgresStore) -> None:
    store.save(make_record(), 0)
    with psycopg.connect(schema_url) as conn:
        conn.execute("UPDATE label_set_versions SET arrays = arrays || '\\x00'::bytea")
    with pytest.raises(CorruptEntryError, match="checksum"):
        store.load("animals")
    with psycopg.connect(schema_url) as conn:
        conn.execute("UPDATE label_set_versions SET arrays = substring(arrays from 1 for length(arrays) - 1)")
        conn.execute("UPDATE label_set_blobs SET data = 'x'::bytea")
    with pytest.raises(CorruptEntryError, match="blob"):
        store.load("animals")


def test_migrations_race_applies_each_file_once(schema_url: str) -> None:
    results: list[list[int]] = []
    barrier = threading.Barrier(4)

    def migrate() -> None:
        with psycopg.connect(schema_url) as conn:
            barrier.wait()
            results.append(apply_migrations(conn))

    threads = [threading.Thread(target=migrate) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    versions = [m.version for m in discover()]
    assert sorted(results) == [[], [], [], versions]
    with psycopg.connect(schema_url) as conn:
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    assert [v for (v,) in rows] == versions


def test_edited_migration_is_refused_and_failed_migration_rolls_back(schema_url: str) -> None:
    with psycopg.connect(schema_url) as conn:
        apply_migrations(conn)
        first = discover()[0]
        with pytest.raises(MigrationError, match="edited"):
            apply_migrations(conn, [Migration(first.version, first.name, first.sql + "\n-- changed")])
        broken = Migration(999, "broken", "CREATE TABLE half_done (x int); SELECT no_such_function();")
        with pytest.raises(psycopg.errors.UndefinedFunction):
            apply_migrations(conn, [*discover(), broken])
        conn.rollback()
        exists = conn.execute("SELECT to_regclass('half_done') IS NOT NULL").fetchone()[0]
        recorded = conn.execute("SELECT count(*) FROM schema_migrations WHERE version = 999").fetchone()[0]
    assert not exists and recorded == 0


def test_missing_schema_is_a_clear_error() -> None:
    from tests.support.postgres import with_search_path

    url = with_search_path(ci_database_url(), "schema_that_does_not_exist")  # type: ignore[arg-type]
    with pytest.raises(MigrationError, match="search_path"):
        PostgresStore(url)


# ---- a private cluster we can crash ------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[ThrowawayCluster]:
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries are not installed")
    c = ThrowawayCluster(bindir)
    c.start()
    yield c
    c.remove()


def test_database_killed_mid_write_never_leaves_a_torn_label_set(cluster: ThrowawayCluster) -> None:
    """The writer has moved the head row and inserted the new version when the database dies (it is
    held there by a lock on the blobs table): after the restart the label set is the old version,
    complete, and the writer was told the write failed."""
    with fresh_schema(cluster.url) as url:
        store = PostgresStore(url, timeout_s=2.0)
        try:
            v1 = make_record(n=50_000, fill=1.0)
            store.save(v1, 0)
            v2 = next_record(v1, 2.0)
            errors: list[BaseException] = []

            def write() -> None:
                try:
                    store.save(v2, expected_version=1)
                except BaseException as exc:
                    errors.append(exc)

            blocker = psycopg.connect(url)
            blocker.execute("LOCK TABLE label_set_blobs IN ACCESS EXCLUSIVE MODE")
            writer = threading.Thread(target=write)
            writer.start()
            deadline = time.monotonic() + 10
            while not blocker.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'trustserve' "
                "AND wait_event_type = 'Lock'"
            ).fetchone()[0]:
                assert time.monotonic() < deadline, "the write never reached the blobs insert"
                time.sleep(0.01)
            cluster.crash()
            writer.join(30)
            blocker.close()
            cluster.start()
            assert len(errors) == 1 and isinstance(errors[0], StoreUnavailableError)
            loaded = _load_when_back(store)
            assert loaded.meta == v1.meta
            assert loaded.blobs == v1.blobs
            np.testing.assert_array_equal(loaded.arrays["text_embeddings"], v1.arrays["text_embeddings"])
            with psycopg.connect(url) as conn:
                versions = conn.execute("SELECT version FROM label_set_versions").fetchall()
            assert versions == [(1,)]
            store.save(v2, expected_version=1)  # the retry succeeds in full
            assert store.load("animals").blobs == v2.blobs
        finally:
            store.close()


def _load_when_back(store: PostgresStore, timeout_s: float = 10.0) -> StoredLabelSet:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return store.load("animals")
        except StoreUnavailableError:
            assert time.monotonic() < deadline, "store did not reconnect after the restart"
            time.sleep(0.1)


def test_outage_fails_fast_then_recovers(cluster: ThrowawayCluster) -> None:
    with fresh_schema(cluster.url) as url:
        store = PostgresStore(url, timeout_s=1.0)
        try:
            store.save(make_record(), 0)
            cluster.crash()
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError):
                store.load("animals")
            with pytest.raises(StoreUnavailableError):
                store.save(next_record(make_record(), 2.0), 1)
            assert time.monotonic() - started < 5.0
            cluster.start()
            assert _load_when_back(store).meta.version == 1
            store.save(next_record(make_record(), 2.0), 1)
            assert store.current_version("animals") == 2
        finally:
            store.close()


def test_store_opened_before_its_database_waits_for_it(cluster: ThrowawayCluster) -> None:
    with fresh_schema(cluster.url) as url:
        cluster.crash()
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError):
            PostgresStore(url, timeout_s=0.5, open_timeout_s=1.0)
        assert time.monotonic() - started < 5.0
        opened: list[PostgresStore] = []
        opener = threading.Thread(target=lambda: opened.append(PostgresStore(url, timeout_s=0.5)))
        opener.start()  # no open timeout: waits for the database however long it takes
        time.sleep(1.0)
        assert opener.is_alive() and not opened
        cluster.start()
        opener.join(15)
        assert opened, "the store did not open once the database was up"
        try:
            opened[0].save(make_record(), 0)
            assert opened[0].current_version("animals") == 1
        finally:
            opened[0].close()
