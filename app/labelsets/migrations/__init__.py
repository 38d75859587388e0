"""Versioned SQL migrations for the PostgreSQL label-set store.

Files ``NNNN_<name>.sql`` in this folder are applied in order. ``schema_migrations`` records each applied
version with the file's sha256, so an edited migration is detected instead of silently skipped. All pending
files run in one transaction under a transaction-scoped advisory lock keyed on the schema, so replicas that
start together apply them exactly once (the others wait, then find nothing to do). Migrations are
expand-only: a replica running older code keeps working against a newer schema.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent
_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    sha256      text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(Exception):
    """The database schema cannot be brought to this code's version (edited or missing migration)."""


@dataclass(frozen=True)
class Migration:
    """One SQL file: its version number, name, text and checksum."""

    version: int
    name: str
    sql: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(folder: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Every ``NNNN_name.sql`` in ``folder``, ordered by version; duplicate versions are an error."""
    found: dict[int, Migration] = {}
    for path in sorted(folder.glob("*.sql")):
        match = _FILE_RE.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files must be named NNNN_lower_snake.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"two migrations with version {version}")
        found[version] = Migration(version, match.group(2), path.read_text())
    return [found[v] for v in sorted(found)]


def apply_migrations(conn: psycopg.Connection, migrations: list[Migration] | None = None) -> list[int]:
    """Bring the connection's current schema up to date; returns the versions applied now.

    Runs in one transaction holding ``pg_advisory_xact_lock`` on a key derived from the schema name, so
    concurrent callers serialise and a failure leaves the schema exactly as it was.
    """
    migrations = discover() if migrations is None else migrations
    if not migrations:
        raise MigrationError(f"no migration files in {MIGRATIONS_DIR} (were the .sql files packaged?)")
    applied_now: list[int] = []
    with conn.transaction():
        schema = conn.execute("SELECT current_schema()").fetchone()
        if schema is None or schema[0] is None:
            raise MigrationError(
                "no schema to create tables in: the search_path names no existing schema "
                "(create it first, or fix options=-csearch_path=... in the database URL)"
            )
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"trustserve.migrations:{schema[0]}"])
        conn.execute(_CREATE_TABLE)
        done: dict[int, str] = dict(conn.execute("SELECT version, sha256 FROM schema_migrations").fetchall())
        known = {m.version for m in migrations}
        for migration in migrations:
            if migration.version in done:
                if done[migration.version] != migration.sha256:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} was edited after it was "
                        "applied; add a new migration instead"
                    )
                continue
            conn.execute(migration.sql)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, sha256) VALUES (%s, %s, %s)",
                [migration.version, migration.name, migration.sha256],
            )
            applied_now.append(migration.version)
        newer = sorted(set(done) - known)
        if newer:
            log.warning("database schema has migrations %s this code does not know (newer replica)", newer)
    if applied_now:
        log.info("label-set store: applied migrations %s in schema %s", applied_now, schema[0])
    return applied_now
