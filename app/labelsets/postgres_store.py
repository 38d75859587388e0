"""PostgreSQL label-set store: several replicas share label sets through one database.

Same contract as ``DirectoryStore`` (``app/labelsets/store.py``): whole-label-set versioned writes with
optimistic concurrency. A write is one transaction: lock the head row (``SELECT ... FOR UPDATE``), compare
the version with the writer's ``expected_version`` (a stale writer gets ``VersionConflictError``, never a
lost update), insert the new version's metadata, safetensors arrays and blobs, move the head, prune old
versions. PostgreSQL commits all of it or none of it, so a crash or a killed database never leaves a
half-written label set. A trigger announces every committed head change with ``NOTIFY`` (see
``app/labelsets/sync.py``).

The schema lives in the first schema of the connection's ``search_path`` (``public`` by default; a URL
such as ``postgresql://u@h/db?options=-csearch_path%3Dtrustserve`` picks another) and is created or
upgraded by ``app/labelsets/migrations`` when the store opens.

Connections come from a ``psycopg_pool.ConnectionPool``: it reconnects in the background with
bounded exponential backoff, and every borrowed connection is checked first, so after a database restart the
first request does not fail on a dead socket. While the database is unreachable every call raises
``StoreUnavailableError`` within ``timeout_s``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool
from pydantic import ValidationError
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from app.labelsets.migrations import apply_migrations
from app.labelsets.models import LabelSetMeta, is_valid_slug
from app.labelsets.store import (
    CorruptEntryError,
    LabelSetNotFoundError,
    LabelSetStore,
    StoredLabelSet,
    StoreError,
    VersionConflictError,
)

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "trustserve_label_sets"

# libpq settings for every connection: fail fast on an unreachable host, notice a dead peer within
# about 15 s even without traffic (TCP keepalives), and name the application in pg_stat_activity.
CONNECTION_KWARGS: dict[str, Any] = {
    "connect_timeout": 3,
    "application_name": "trustserve",
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}


class StoreUnavailableError(StoreError):
    """The database cannot be reached (or went away during the call). Reads and writes may be retried;
    a write that failed this way either committed completely or not at all."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def _unavailable_on_connection_errors(what: str) -> Iterator[None]:
    """Turn connection-level failures (refused, reset, admin shutdown, pool timeout) into
    ``StoreUnavailableError``; errors in our own SQL still surface as they are."""
    try:
        yield
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise StoreUnavailableError(f"label-set database unavailable during {what}: {exc}") from exc


class PostgresStore(LabelSetStore):
    """Label sets in PostgreSQL (``TRUSTSERVE_DATABASE_URL``), shared by every replica.

    ``keep_versions`` past versions of each label set stay in ``label_set_versions`` (audit, manual
    rollback); older ones are pruned in the writing transaction.
    """

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 4,
        timeout_s: float = 5.0,
        keep_versions: int = 3,
        open_timeout_s: float | None = None,
    ) -> None:
        if keep_versions < 1:
            raise ValueError("keep_versions must be at least 1")
        self.url = url
        self.keep_versions = keep_versions
        self.timeout_s = timeout_s
        self.pool = ConnectionPool(
            url,
            kwargs=CONNECTION_KWARGS,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout_s,
            check=ConnectionPool.check_connection,
            # A reconnect attempt backs off 1, 2, 4 ... s (psycopg_pool) and gives up after this long; the
            # next request starts a fresh attempt at once. Bounded, so that after a long outage the pool
            # does not sit in a minutes-long backoff while the database is already back.
            reconnect_timeout=5.0,
            name="trustserve-label-sets",
            open=False,
        )
        self._open(open_timeout_s)

    def _open(self, open_timeout_s: float | None) -> None:
        """Open the pool and apply migrations, retrying with backoff while the database is unreachable
        (for ever when ``open_timeout_s`` is None: a replica started before its database waits for it)."""
        self.pool.open(wait=False)
        deadline = time.monotonic() + (float("inf") if open_timeout_s is None else open_timeout_s)
        delay = 0.2
        while True:
            try:
                with _unavailable_on_connection_errors("start-up"), self.pool.connection() as conn:
                    apply_migrations(conn)
                    self.schema = conn.execute("SELECT current_schema()").fetchone()[0]  # type: ignore[index]
                return
            except StoreUnavailableError as exc:
                if time.monotonic() + delay > deadline:
                    self.pool.close()
                    raise
                log.warning("label-set database not reachable yet (%s); retrying in %.1f s", exc, delay)
            except BaseException:
                self.pool.close()
                raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def close(self) -> None:
        """Close every pooled connection."""
        self.pool.close()

    def describe(self) -> str:
        info = psycopg.conninfo.conninfo_to_dict(self.url)
        where = f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"
        return f"PostgreSQL store at {where} (schema {self.schema})"

    # ---- reads ---------------------------------------------------------------------------------

    def list_ids(self) -> list[str]:
        with _unavailable_on_connection_errors("list"), self.pool.connection() as conn:
            return [row[0] for row in conn.execute("SELECT id FROM label_sets ORDER BY id")]

    def versions(self) -> dict[str, int]:
        """Committed version of every label set, in one query (the replicas' periodic check)."""
        with _unavailable_on_connection_errors("version check"), self.pool.connection() as conn:
            return dict(conn.execute("SELECT id, version FROM label_sets").fetchall())

    def current_version(self, label_set_id: str) -> int:
        with _unavailable_on_connection_errors("version lookup"), self.pool.connection() as conn:
            row = conn.execute("SELECT version FROM label_sets WHERE id = %s", [label_set_id]).fetchone()
        return 0 if row is None else int(row[0])

    def load(self, label_set_id: str) -> StoredLabelSet:
        if not is_valid_slug(label_set_id):
            raise LabelSetNotFoundError(f"invalid label-set id {label_set_id!r}")
        # One snapshot for the head, its version row and its blobs (a concurrent write cannot
        # interleave), read-only so it takes no locks.
        with _unavailable_on_connection_errors("load"), self.pool.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            row = conn.execute(
                "SELECT v.version, v.meta, v.arrays, v.arrays_sha256 FROM label_sets h "
                "JOIN label_set_versions v ON v.label_set_id = h.id AND v.version = h.version "
                "WHERE h.id = %s",
                [label_set_id],
            ).fetchone()
            if row is None:
                raise LabelSetNotFoundError(label_set_id)
            version, meta_json, arrays_bytes, arrays_sha = row
            blobs = conn.execute(
                "SELECT name, data, sha256 FROM label_set_blobs WHERE label_set_id = %s AND version = %s",
                [label_set_id, version],
            ).fetchall()
        return _decode(label_set_id, version, meta_json, bytes(arrays_bytes), arrays_sha, blobs)

    # ---- writes --------------------------------------------------------------------------------

    def save(self, record: StoredLabelSet, expected_version: int) -> None:
        meta = record.meta
        if meta.version != expected_version + 1:
            raise ValueError(
                f"record version {meta.version} must be expected_version + 1 = {expected_version + 1}"
            )
        arrays = save_safetensors({k: np.ascontiguousarray(v) for k, v in record.arrays.items()})
        with _unavailable_on_connection_errors("save"), self.pool.connection() as conn, conn.transaction():
            if expected_version == 0:
                # Concurrent creators: the unique key makes the second INSERT wait for the first to
                # commit, then insert nothing.
                inserted = conn.execute(
                    "INSERT INTO label_sets (id, version) VALUES (%s, 1) ON CONFLICT (id) DO NOTHING",
                    [meta.id],
                ).rowcount
                if inserted != 1:
                    raise VersionConflictError(meta.id, 0, self._locked_version(conn, meta.id))
            else:
                current = self._locked_version(conn, meta.id)
                if current != expected_version:
                    raise VersionConflictError(meta.id, expected_version, current)
                conn.execute(
                    "UPDATE label_sets SET version = %s, updated_at = clock_timestamp() WHERE id = %s",
                    [meta.version, meta.id],
                )
            conn.execute(
                "INSERT INTO label_set_versions (label_set_id, version, meta, arrays, arrays_sha256) "
                "VALUES (%s, %s, %s, %s, %s)",
                [meta.id, meta.version, Jsonb(meta.model_dump(mode="json")), arrays, _sha256(arrays)],
            )
            if record.blobs:
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO label_set_blobs (label_set_id, version, name, data, sha256) "
                        "VALUES (%s, %s, %s, %s, %s)",
                        [
                            (meta.id, meta.version, name, data, _sha256(data))
                            for name, data in record.blobs.items()
                        ],
                    )
            conn.execute(
                "DELETE FROM label_set_versions WHERE label_set_id = %s AND version <= %s",
                [meta.id, meta.version - self.keep_versions],
            )

    def delete(self, label_set_id: str, expected_version: int | None = None) -> None:
        with _unavailable_on_connection_errors("delete"), self.pool.connection() as conn, conn.transaction():
            current = self._locked_version(conn, label_set_id)
            if current == 0:
                raise LabelSetNotFoundError(label_set_id)
            if expected_version is not None and current != expected_version:
                raise VersionConflictError(label_set_id, expected_version, current)
            conn.execute("DELETE FROM label_sets WHERE id = %s", [label_set_id])

    @staticmethod
    def _locked_version(conn: psycopg.Connection, label_set_id: str) -> int:
        """Current version with the head row locked until the transaction ends (0 when absent)."""
        row = conn.execute(
            "SELECT version FROM label_sets WHERE id = %s FOR UPDATE", [label_set_id]
        ).fetchone()
        return 0 if row is None else int(row[0])


def _decode(
    label_set_id: str,
    version: int,
    meta_json: Any,
    arrays_bytes: bytes,
    arrays_sha: str,
    blobs: list[tuple[str, Any, str]],
) -> StoredLabelSet:
    """Validate one stored version (checksums, metadata) into a ``StoredLabelSet``."""
    if _sha256(arrays_bytes) != arrays_sha:
        raise CorruptEntryError(label_set_id, f"arrays of version {version} fail their checksum")
    try:
        meta = LabelSetMeta.model_validate(meta_json)
    except ValidationError as exc:
        raise CorruptEntryError(label_set_id, f"invalid metadata ({exc})") from exc
    if meta.id != label_set_id or meta.version != version:
        raise CorruptEntryError(label_set_id, "stored metadata id/version do not match the row")
    try:
        arrays = dict(load_safetensors(arrays_bytes))
    except Exception as exc:  # safetensors raises its own error types
        raise CorruptEntryError(label_set_id, f"arrays unreadable ({exc})") from exc
    decoded_blobs: dict[str, bytes] = {}
    for name, data, sha in blobs:
        data = bytes(data)
        if _sha256(data) != sha:
            raise CorruptEntryError(label_set_id, f"blob {name!r} of version {version} fails its checksum")
        decoded_blobs[name] = data
    return StoredLabelSet(meta=meta, arrays=arrays, blobs=decoded_blobs)
