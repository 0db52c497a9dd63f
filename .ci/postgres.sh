#!/usr/bin/env bash
# PostgreSQL for the PostgreSQL store tests (tests/pg.py), on a fresh Debian or
# Ubuntu machine. Nothing preinstalled is assumed.
#
#   .ci/postgres.sh           install the server binaries from the distribution's
#                             packages (skipped when initdb is already there). The
#                             tests then start a throwaway cluster of their own on
#                             127.0.0.1 (a free port, a temporary directory) and stop
#                             it at the end of the session.
#   .ci/postgres.sh --start   also initialise and start a cluster on 127.0.0.1 (a free
#                             port) and print the line to hand it to the tests:
#                             export KPLUS_FSM_TEST_PG=postgresql://postgres@127.0.0.1:PORT/postgres
#                             (eval "$(.ci/postgres.sh --start)"); stop it with
#                             pg_ctl -D DIR stop (DIR is printed on stderr).
set -euo pipefail

find_bin() {
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
        return 0
    fi
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4 -n | tail -n 1 || true)
    if [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
        echo "$dir"
        return 0
    fi
    return 1
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "postgres.sh: installing PostgreSQL needs root (or sudo)" >&2
        exit 1
    fi
}

if bin=$(find_bin); then
    echo "== PostgreSQL already installed: $bin" >&2
else
    echo "== installing PostgreSQL from the distribution's packages" >&2
    # No default cluster: the tests start their own, on a free port.
    as_root mkdir -p /etc/postgresql-common
    if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
        echo "create_main_cluster = false" | as_root tee /etc/postgresql-common/createcluster.conf >/dev/null
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >&2
    bin=$(find_bin) || { echo "postgres.sh: initdb not found after the install" >&2; exit 1; }
    echo "== PostgreSQL installed: $bin" >&2
fi
"$bin/postgres" --version >&2

if [ "${1:-}" != "--start" ]; then
    exit 0
fi

# A cluster on 127.0.0.1, trust authentication on loopback only, in a temporary
# directory; run as the postgres user when we are root (initdb refuses root).
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
dir=$(mktemp -d /tmp/kplus-ci-pg.XXXXXX)
run=()
if [ "$(id -u)" -eq 0 ]; then
    user=postgres
    id postgres >/dev/null 2>&1 || user=nobody
    chown "$user" "$dir"
    run=(runuser -u "$user" --)
fi
"${run[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
"${run[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$dir" start >&2
echo "== PostgreSQL listening on 127.0.0.1:$port (data in $dir/data)" >&2
echo "export KPLUS_FSM_TEST_PG=postgresql://postgres@127.0.0.1:$port/postgres"
