# Starts a throw-away PostgreSQL cluster on 127.0.0.1:55432 owned by the postgres user, and exports
# TRUSTSERVE_TEST_DATABASE_URL for the tests. Sourced by .ci/run; usable by hand: source .ci/postgres.sh; start_postgres
start_postgres() {
  local bindir
  bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$bindir" ]; then
    echo "PostgreSQL binaries not found; postgres tests will be skipped" >&2
    return 0
  fi
  export PGTEST_DIR=${PGTEST_DIR:-/tmp/trustserve-pg}
  export PGTEST_PORT=${PGTEST_PORT:-55432}
  export PGTEST_BINDIR=$bindir
  if [ ! -f "$PGTEST_DIR/PG_VERSION" ]; then
    rm -rf "$PGTEST_DIR"; mkdir -p "$PGTEST_DIR"; chown postgres "$PGTEST_DIR"
    su postgres -c "$bindir/initdb -D $PGTEST_DIR -A trust -U postgres" >/dev/null
  fi
  _pg_start() {
    su postgres -c "$bindir/pg_ctl -D $PGTEST_DIR -o '-p $PGTEST_PORT -k /tmp -c listen_addresses=127.0.0.1' -l $PGTEST_DIR/log -w start" >/dev/null 2>&1 || true
  }
  _pg_start
  if ! "$bindir/pg_isready" -q -h 127.0.0.1 -p "$PGTEST_PORT"; then
    # a stale or broken throw-away cluster: make a new one
    rm -rf "$PGTEST_DIR"; mkdir -p "$PGTEST_DIR"; chown postgres "$PGTEST_DIR"
    su postgres -c "$bindir/initdb -D $PGTEST_DIR -A trust -U postgres" >/dev/null
    _pg_start
  fi
  "$bindir/pg_isready" -q -h 127.0.0.1 -p "$PGTEST_PORT" || { echo "PostgreSQL did not start: $(tail -5 "$PGTEST_DIR/log")" >&2; return 1; }
  su postgres -c "psql -h 127.0.0.1 -p $PGTEST_PORT -U postgres -tc \"SELECT 1 FROM pg_database WHERE datname='trustserve_test'\"" | grep -q 1 \
    || su postgres -c "psql -h 127.0.0.1 -p $PGTEST_PORT -U postgres -c 'CREATE DATABASE trustserve_test'" >/dev/null
  export TRUSTSERVE_TEST_DATABASE_URL="postgresql://postgres@127.0.0.1:$PGTEST_PORT/trustserve_test"
  echo "PostgreSQL ready at $TRUSTSERVE_TEST_DATABASE_URL"
}
