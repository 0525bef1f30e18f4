#!/usr/bin/env bash
# Starts docker-compose.yml's topology as local processes, without Docker:
#
#   service (compose)   here
#   postgres-a          database parley_topology_a_<pid> on the local Postgres
#   postgres-b          database parley_topology_b_<pid> on the local Postgres
#   homeserver-a        parley-homeserver on 127.0.0.2:$PORT, server name 127.0.0.2:$PORT
#   homeserver-b        parley-homeserver on 127.0.0.3:$PORT, server name 127.0.0.3:$PORT
#   push-gateway        parley-push-gateway on 127.0.0.1:$PUSH_PORT
#
# Each homeserver gets the same PARLEY_* settings as its compose service (federation on,
# test mode, JSON logs, admin API on its own address at $PORT+1, allowlist policy naming
# the other server), with addresses instead of service names. `cargo xtask deploy`
# checks that every PARLEY_* setting of the compose file appears here too.
#
# Once everything is up it writes $DIR/topology.env (the URLs, names, admin token),
# prints `parley local topology listening on 127.0.0.2:$PORT`, and waits. On SIGINT or
# SIGTERM, or when one of its processes dies, it stops them all and drops its databases.
#
# Settings (environment):
#   PARLEY_BIN_DIR         where the binaries are [${CARGO_TARGET_DIR:-target}/release]
#   PARLEY_PG_ADMIN_URL    a Postgres URL allowed to create databases
#                          [$DATABASE_URL, else postgres://postgres@127.0.0.1:5432/postgres]
#   PARLEY_TOPOLOGY_DIR    state and logs [a new temporary directory]
#   PARLEY_TOPOLOGY_PORT   the homeservers' port on 127.0.0.2 and 127.0.0.3 [8448]
#   PARLEY_TOPOLOGY_PUSH_PORT  the push gateway's port on 127.0.0.1 [8090]
#   PARLEY_ADMIN_TOKEN     both admin APIs' token [local-topology-admin-token]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN_DIR=${PARLEY_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
PG_ADMIN_URL=${PARLEY_PG_ADMIN_URL:-${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}}
DIR=${PARLEY_TOPOLOGY_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/parley-topology.XXXXXX")}
PORT=${PARLEY_TOPOLOGY_PORT:-8448}
ADMIN_PORT=$((PORT + 1))
PUSH_PORT=${PARLEY_TOPOLOGY_PUSH_PORT:-8090}
ADMIN_TOKEN=${PARLEY_ADMIN_TOKEN:-local-topology-admin-token}
READY_SECONDS=60

PG_BASE=${PG_ADMIN_URL%/*}
DB_A=parley_topology_a_$$
DB_B=parley_topology_b_$$
PIDS=()
DATABASES=()

say() { echo "local-topology: $*" >&2; }
die() {
    say "error: $*"
    exit 1
}

psql_admin() { psql "$PG_ADMIN_URL" -v ON_ERROR_STOP=1 -Atqc "$1" >/dev/null; }

cleanup() {
    trap - EXIT INT TERM
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    local db
    for db in "${DATABASES[@]}"; do
        psql_admin "DROP DATABASE IF EXISTS $db WITH (FORCE)" || say "could not drop $db"
    done
    rm -f "$DIR/pids"
    say "stopped"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

command -v psql >/dev/null 2>&1 || die "psql not found (apt-get install postgresql-client)"
[[ -x "$BIN_DIR/parley-homeserver" ]] \
    || die "no $BIN_DIR/parley-homeserver (cargo build --release -p parley-homeserver, or set PARLEY_BIN_DIR)"
mkdir -p "$DIR"
: >"$DIR/pids"

# Starts a process in the background with its output in $DIR/<name>.log.
spawn() {
    local name=$1
    shift
    "$@" >"$DIR/$name.log" 2>&1 &
    PIDS+=("$!")
    echo "$!" >>"$DIR/pids"
}

# Waits until $DIR/<name>.log has a line containing $2, or fails with the log.
await_line() {
    local name=$1 needle=$2 pid=$3
    for _ in $(seq 1 $((READY_SECONDS * 10))); do
        grep -qF "$needle" "$DIR/$name.log" && return 0
        kill -0 "$pid" 2>/dev/null || die "$name exited before it was ready:
$(cat "$DIR/$name.log")"
        sleep 0.1
    done
    die "$name was not ready within $READY_SECONDS s:
$(cat "$DIR/$name.log")"
}

# homeserver <name> <ip> <database> <peer ip>: compose service homeserver-<name>.
homeserver() {
    local name=$1 ip=$2 db=$3 peer=$4
    psql_admin "CREATE DATABASE $db"
    DATABASES+=("$db")
    mkdir -p "$DIR/homeserver-$name"
    # The compose file's `configs: homeserver-<name>`, with the peer's address.
    cat >"$DIR/homeserver-$name/homeserver.toml" <<TOML
[federation.policy]
mode = "allowlist"
rules = [{ pattern = "$peer:*", action = "allow" }]
TOML
    spawn "homeserver-$name" env \
        PARLEY_SERVER_NAME="$ip:$PORT" \
        PARLEY_LISTEN="$ip:$PORT" \
        PARLEY_DATABASE_URL="$PG_BASE/$db" \
        PARLEY_DATA_DIR="$DIR/homeserver-$name" \
        PARLEY_LOG_FORMAT=json \
        PARLEY_FEDERATION=true \
        PARLEY_FEDERATION_TEST_MODE=true \
        PARLEY_ADMIN_LISTEN="$ip:$ADMIN_PORT" \
        PARLEY_ADMIN_TOKEN="$ADMIN_TOKEN" \
        "$BIN_DIR/parley-homeserver" --config "$DIR/homeserver-$name/homeserver.toml"
}

homeserver a 127.0.0.2 "$DB_A" 127.0.0.3
HS_A_PID=${PIDS[-1]}
homeserver b 127.0.0.3 "$DB_B" 127.0.0.2
HS_B_PID=${PIDS[-1]}
await_line homeserver-a "parley-homeserver listening on" "$HS_A_PID"
await_line homeserver-b "parley-homeserver listening on" "$HS_B_PID"
say "homeserver-a on 127.0.0.2:$PORT, homeserver-b on 127.0.0.3:$PORT (logs in $DIR)"

PUSH_URL=""
if [[ -x "$BIN_DIR/parley-push-gateway" ]]; then
    spawn push-gateway "$BIN_DIR/parley-push-gateway" --listen "127.0.0.1:$PUSH_PORT"
    PUSH_PID=${PIDS[-1]}
    for _ in $(seq 1 $((READY_SECONDS * 10))); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PUSH_PORT") 2>/dev/null && break
        kill -0 "$PUSH_PID" 2>/dev/null || die "push-gateway exited:
$(cat "$DIR/push-gateway.log")"
        sleep 0.1
    done
    PUSH_URL="http://127.0.0.1:$PUSH_PORT"
    say "push-gateway on 127.0.0.1:$PUSH_PORT"
else
    say "WARNING: no $BIN_DIR/parley-push-gateway: the push gateway is NOT running"
fi

cat >"$DIR/topology.env" <<ENV
HOMESERVER_A_URL=http://127.0.0.2:$PORT
HOMESERVER_A_NAME=127.0.0.2:$PORT
HOMESERVER_A_ADMIN_URL=http://127.0.0.2:$ADMIN_PORT
HOMESERVER_A_DATABASE=$PG_BASE/$DB_A
HOMESERVER_B_URL=http://127.0.0.3:$PORT
HOMESERVER_B_NAME=127.0.0.3:$PORT
HOMESERVER_B_ADMIN_URL=http://127.0.0.3:$ADMIN_PORT
HOMESERVER_B_DATABASE=$PG_BASE/$DB_B
PUSH_GATEWAY_URL=$PUSH_URL
ADMIN_TOKEN=$ADMIN_TOKEN
ENV
echo "parley local topology listening on 127.0.0.2:$PORT"

# Until a signal, or until one of the processes dies.
set +e
wait -n "${PIDS[@]}"
status=$?
say "a process exited (status $status); stopping the others"
exit 1
