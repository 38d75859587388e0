"""Cache coherence between replicas that share a ``PostgresStore``.

Each replica keeps its label sets (and their FAISS indexes) in memory. ``LabelSetSync`` tells it which ids
another replica changed, so it rebuilds only those:

1. ``LISTEN trustserve_label_sets`` on a dedicated connection. The store's trigger sends
   ``{"schema", "id", "version"}`` when a write commits; a notification for a version this replica already
   serves (its own write) is ignored, any other one triggers ``sink.refresh(id, version)`` at once. A
   replica's own notification can arrive before the write that caused it has published its view: the
   sink checks the version again once its write lock is free, so its own write is never re-read.
2. A version check (``SELECT id, version, created_at FROM label_sets``) right after every (re)connect and
   then every ``poll_interval_s``: it catches whatever was missed while the connection was down
   (notifications are not queued for a listener that is not connected) and label sets deleted and
   re-created to the same version.
3. While the database cannot be reached the loop reconnects with capped exponential backoff (with
   jitter) and ``readiness_problem()`` reports it, so /readyz turns red; classify keeps reading the
   in-memory views, which stay at the last version seen.

Staleness bound while the database is reachable: a change is visible on every replica after the
notification round trip plus one load + index rebuild (milliseconds, see docs/SCALE_OUT.md); if a
notification is lost, after at most ``poll_interval_s`` plus that same load time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import psycopg
from psycopg import sql

from app.labelsets.postgres_store import (
    CONNECTION_KWARGS,
    NOTIFY_CHANNEL,
    PostgresStore,
    StoreUnavailableError,
)

log = logging.getLogger(__name__)


class ChangeSink(Protocol):
    """What the watcher needs from the label-set service (``LabelSetService`` implements it)."""

    def local_versions(self) -> Mapping[str, int]:
        """Version of every label set this replica serves now."""
        ...

    async def refresh(self, label_set_id: str, version: int | None = None) -> None:
        """Re-read one label set from the store and rebuild its view, or drop it when the store no
        longer has it; nothing to do when, after any write of its own to that label set has finished, the
        replica serves ``version`` (None: re-read regardless). May raise when the stored entry cannot be
        served (it is then not retried until its version changes)."""
        ...


@dataclass
class SyncStats:
    """Counters for logs, tests and the benchmark."""

    connects: int = 0
    disconnects: int = 0
    notifications: int = 0
    version_checks: int = 0
    refreshes: int = 0
    refresh_failures: int = 0
    last_check_monotonic: float | None = None


class LabelSetSync:
    """Background task keeping one replica's label sets in step with the database."""

    def __init__(
        self,
        url: str,
        schema: str,
        sink: ChangeSink,
        *,
        poll_interval_s: float = 5.0,
        min_backoff_s: float = 0.2,
        max_backoff_s: float = 2.0,
    ) -> None:
        if poll_interval_s <= 0:
            raise ValueError("poll_interval_s must be positive")
        self.url = url
        self.schema = schema
        self.sink = sink
        self.poll_interval_s = poll_interval_s
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.stats = SyncStats()
        self._task: asyncio.Task[None] | None = None
        self._problem: str | None = "not connected to the label-set database yet"
        self._seen: dict[str, tuple[int, datetime]] = {}
        self._failed_at: dict[str, int] = {}
        self._synced = asyncio.Event()

    @classmethod
    def for_store(cls, store: PostgresStore, sink: ChangeSink, **options: float) -> LabelSetSync:
        """A watcher on the same database and schema as ``store``."""
        return cls(store.url, store.schema, sink, **options)

    # ---- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background loop (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="label-set-sync")

    async def stop(self) -> None:
        """Cancel the loop and close its connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def wait_synced(self, timeout_s: float) -> bool:
        """True once a version check has completed since the last (re)connect (tests, start-up)."""
        try:
            await asyncio.wait_for(self._synced.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    @property
    def connected(self) -> bool:
        """True while the LISTEN connection is up and its catch-up version check has run."""
        return self._problem is None

    async def readiness_problem(self) -> str | None:
        """Why this replica should not be marked ready (database unreachable, checks stalled), or None."""
        if self._problem is not None:
            return self._problem
        last = self.stats.last_check_monotonic
        stale_after = 3 * self.poll_interval_s + 15.0  # a hung connection is noticed by keepalives
        if last is None or time.monotonic() - last > stale_after:
            return f"no version check with the label-set database for over {stale_after:.0f} s"
        return None

    # ---- the loop ------------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self.min_backoff_s
        while True:
            connects_before = self.stats.connects
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # psycopg.Error normally; anything else must not kill the loop
                if not isinstance(exc, psycopg.Error):
                    log.exception("label-set sync loop failed")
                if self._problem is None:
                    self.stats.disconnects += 1
                    log.warning("label-set database connection lost: %s", exc)
                self._problem = f"label-set database unreachable: {str(exc).strip() or type(exc).__name__}"
                self._synced.clear()
            if self.stats.connects > connects_before:
                delay = self.min_backoff_s  # that connection worked: retry fast, then back off
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.max_backoff_s)

    async def _listen_once(self) -> None:
        """One connection's life: LISTEN, catch up, then notifications interleaved with version checks."""
        async with await psycopg.AsyncConnection.connect(
            self.url, autocommit=True, **CONNECTION_KWARGS
        ) as conn:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
            self.stats.connects += 1
            await self._version_check(conn)  # whatever happened while we were not listening
            if self._problem is not None:
                log.info("label-set database connection (re)established")
            self._problem = None
            self._synced.set()
            while True:
                async for note in conn.notifies(timeout=self.poll_interval_s):
                    await self._on_notification(note.payload)
                await self._version_check(conn)

    async def _on_notification(self, payload: str) -> None:
        try:
            change = json.loads(payload)
            schema, label_set_id, version = change["schema"], str(change["id"]), int(change["version"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring malformed label-set notification %r", payload)
            return
        if schema != self.schema:
            return  # another deployment sharing the database
        self.stats.notifications += 1
        if self.sink.local_versions().get(label_set_id, 0) == version:
            return  # our own write, or already applied
        await self._refresh(label_set_id, version)

    async def _version_check(self, conn: psycopg.AsyncConnection) -> None:
        cur = await conn.execute("SELECT id, version, created_at FROM label_sets")
        remote = {row[0]: (int(row[1]), row[2]) for row in await cur.fetchall()}
        local = self.sink.local_versions()
        changed: dict[str, int | None] = {}  # id -> version to reach (None: re-created, read it anyway)
        for label_set_id, token in remote.items():
            version = token[0]
            recreated = label_set_id in self._seen and self._seen[label_set_id][1] != token[1]
            if self._failed_at.get(label_set_id) == version and not recreated:
                continue
            if local.get(label_set_id) != version or recreated:
                changed[label_set_id] = None if recreated else version
        changed.update({label_set_id: 0 for label_set_id in local if label_set_id not in remote})
        self._seen = remote
        for label_set_id in sorted(changed):
            await self._refresh(label_set_id, changed[label_set_id])
        self.stats.version_checks += 1
        self.stats.last_check_monotonic = time.monotonic()

    async def _refresh(self, label_set_id: str, version: int | None) -> None:
        """Ask the sink to reload one id; remember failures so a broken entry is not reloaded in a loop."""
        try:
            await self.sink.refresh(label_set_id, version)
        except asyncio.CancelledError:
            raise
        except StoreUnavailableError as exc:  # transient: the next version check retries it
            self.stats.refresh_failures += 1
            log.warning("label set %r not refreshed yet: %s", label_set_id, exc)
            return
        except Exception as exc:
            self.stats.refresh_failures += 1
            failed_version = version if version is not None else self._seen.get(label_set_id, (0, None))[0]
            self._failed_at[label_set_id] = failed_version
            log.error("label set %r (version %s) could not be refreshed: %s", label_set_id, version, exc)
            return
        self.stats.refreshes += 1
        self._failed_at.pop(label_set_id, None)
        log.info("label set %r refreshed from the database (version %s)", label_set_id, version)
