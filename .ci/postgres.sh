#!/usr/bin/env bash
# Start a throw-away PostgreSQL server for the storage tests and export its URL.
#
#   source .ci/postgres.sh      # exports STUDIO_TEST_POSTGRES_URL; studio_postgres_stop stops it
#   bash .ci/postgres.sh        # prints the URL (the server keeps running)
#
# Installs Debian's postgresql package when no server binaries exist, runs the server as the
# postgres user (when root) on 127.0.0.1 on a free port with a temporary data folder.
# Written to be sourced: no set -e, failures return non-zero and say why.

_studio_pg_main() {
    local bindir port datadir runas
    bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
        echo "postgres.sh: installing PostgreSQL (apt-get install -y postgresql)" >&2
        if [ "$(id -u)" -ne 0 ]; then
            echo "postgres.sh: not root, cannot install PostgreSQL" >&2
            return 1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null; } \
            || { echo "postgres.sh: apt-get install postgresql failed" >&2; return 1; }
        bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    fi
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
    datadir=$(mktemp -d /tmp/studio-pg.XXXXXX)
    runas=()
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres: "$datadir"
        runas=(runuser -u postgres --)
    fi
    "${runas[@]}" "$bindir/initdb" -D "$datadir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$datadir/initdb.log" 2>&1 \
        || "${runas[@]}" "$bindir/initdb" -D "$datadir/data" -U postgres --auth=trust -E UTF8 >"$datadir/initdb.log" 2>&1 \
        || { echo "postgres.sh: initdb failed, see $datadir/initdb.log" >&2; cat "$datadir/initdb.log" >&2; return 1; }
    "${runas[@]}" "$bindir/pg_ctl" -D "$datadir/data" -l "$datadir/server.log" -w -t 60 \
        -o "-h 127.0.0.1 -p $port -k $datadir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
        start >/dev/null \
        || { echo "postgres.sh: server did not start, see $datadir/server.log" >&2; cat "$datadir/server.log" >&2; return 1; }
    "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres studio_test \
        || { echo "postgres.sh: createdb failed" >&2; return 1; }
    export STUDIO_TEST_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:$port/studio_test"
    export STUDIO_TEST_POSTGRES_DATA="$datadir"
    export STUDIO_TEST_POSTGRES_BIN="$bindir"
    echo "postgres.sh: PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') at $STUDIO_TEST_POSTGRES_URL" >&2
}

studio_postgres_stop() {
    # Stop the server started above and remove its data folder.
    if [ -n "${STUDIO_TEST_POSTGRES_DATA:-}" ] && [ -d "$STUDIO_TEST_POSTGRES_DATA/data" ]; then
        local runas=()
        [ "$(id -u)" -eq 0 ] && runas=(runuser -u postgres --)
        "${runas[@]}" "$STUDIO_TEST_POSTGRES_BIN/pg_ctl" -D "$STUDIO_TEST_POSTGRES_DATA/data" -m immediate stop >/dev/null 2>&1
        rm -rf "$STUDIO_TEST_POSTGRES_DATA"
    fi
    unset STUDIO_TEST_POSTGRES_URL STUDIO_TEST_POSTGRES_DATA STUDIO_TEST_POSTGRES_BIN
}

if _studio_pg_main; then
    if [ "${BASH_SOURCE[0]}" = "$0" ]; then
        echo "$STUDIO_TEST_POSTGRES_URL"
    fi
else
    echo "postgres.sh: no PostgreSQL server for the tests" >&2
    # shellcheck disable=SC2317
    return 1 2>/dev/null || exit 1
fi
