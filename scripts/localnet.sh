#!/usr/bin/env bash
# A SREMP localnet on loopback: one rendezvous server (TLS with a localnet CA), one relay in
# relay-only mode, and N personal nodes that know each other.
#
#   scripts/localnet.sh up [N]      start everything (N personal nodes, default 2, at most 20)
#   scripts/localnet.sh demo        send messages over the direct path and through the relay
#   scripts/localnet.sh status      `sremp status` of every node
#   scripts/localnet.sh stop NAME   stop one process (node1, relay, ...), e.g. to make it offline
#   scripts/localnet.sh start NAME  start a stopped node again (same data dir and port)
#   scripts/localnet.sh down        stop everything (SIGTERM, then SIGKILL after 10 s)
#
# Environment:
#   LOCALNET_DIR  base directory (default ./localnet): configs, data dirs, logs, pids
#   SREMP_BIN     the sremp binary to use (default: `cargo build --release` and use that)
#   LOCALNET_DELIVERY  the nodes' [node] delivery: "direct-first" (default here, so the demo
#                 shows each path plainly) or "race" (the sremp default)
#   LOCALNET_UNREACHABLE  node names (e.g. "node3") whose listen.advertise points at
#                 127.0.0.1:1, where nothing listens: contacts can reach them only via the relay
#   LOCALNET_INTRODUCE  "1" (default): `up` exchanges the nodes' contact cards; "0": it does
#                 not (the nodes find each other with `sremp discover`)
#
# Every address is 127.0.0.1; every port is picked by the OS (port 0) and read back, and a
# node's port is then fixed in its config so a restarted node comes back on the same address.
# Every wait is bounded. Logs: $LOCALNET_DIR/<name>/log.
set -euo pipefail

BASE="${LOCALNET_DIR:-./localnet}"
mkdir -p "$BASE"
BASE="$(cd "$BASE" && pwd)"
PIDS="$BASE/pids"
NODES="$BASE/nodes"
RV_NAME="rendezvous.localnet"
MAX_NODES=20

die() {
    echo "localnet: $*" >&2
    exit 1
}
say() { echo "localnet: $*" >&2; }

find_bin() {
    if [[ -n "${SREMP_BIN:-}" ]]; then
        [[ -x "$SREMP_BIN" ]] || die "SREMP_BIN=$SREMP_BIN is not executable"
        BIN="$SREMP_BIN"
        return
    fi
    local root target
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    say "building (cargo build --release)"
    (cd "$root" && cargo build --release --quiet) || die "cargo build failed"
    target="$(cd "$root" && cargo metadata --format-version 1 --no-deps |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
    BIN="${target:-$root/target}/release/sremp"
    [[ -x "$BIN" ]] || die "no binary at $BIN"
}

# JSON string field of a one-line JSON object (values here never contain quotes).
json_field() {
    sed -n "s/.*\"$1\":\"\\([^\"]*\\)\".*/\\1/p" | head -n 1
}

# pid of NAME from the pid file (empty if none).
pid_of() {
    [[ -f "$PIDS" ]] || return 0
    awk -v n="$1" '$1 == n { print $2 }' "$PIDS" | tail -n 1
}

set_pid() {
    local tmp="$PIDS.tmp"
    { [[ -f "$PIDS" ]] && awk -v n="$1" '$1 != n' "$PIDS"; echo "$1 $2"; } >"$tmp"
    mv "$tmp" "$PIDS"
}

# True if PID runs. A zombie (exited, not yet reaped by its parent: state Z in
# /proc/PID/stat) still answers `kill -0` but is gone.
alive() {
    [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null || return 1
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    # The state follows the parenthesised command name, which may itself contain ") ".
    stat=${stat##*) }
    [[ "${stat:0:1}" != "Z" ]]
}

# True if PID is alive and (where /proc tells) an sremp process, so a reused pid is never hit.
ours() {
    alive "$1" || return 1
    [[ -r "/proc/$1/cmdline" ]] || return 0
    tr '\0' ' ' <"/proc/$1/cmdline" | grep -q sremp
}

# Starts `sremp --config DIR/config.toml CMD` in the background; records its pid.
spawn() {
    local name="$1" cmd="$2"
    local dir="$BASE/$name"
    "$BIN" --config "$dir/config.toml" "$cmd" </dev/null >>"$dir/log" 2>&1 &
    set_pid "$name" "$!"
}

# Waits (bounded: 20 s) for FILE to exist; fails if the process NAME died.
wait_file() {
    local file="$1" name="$2" i
    for ((i = 0; i < 200; i++)); do
        [[ -s "$file" ]] && return 0
        alive "$(pid_of "$name")" || die "$name exited; see $BASE/$name/log"
        sleep 0.1
    done
    die "timed out waiting for $file; see $BASE/$name/log"
}

# `sremp ... ` against node NAME.
node_cli() {
    local name="$1"
    shift
    "$BIN" --config "$BASE/$name/config.toml" "$@" </dev/null
}

# Waits (bounded: 20 s) until node NAME answers on its control socket; prints its status JSON.
wait_node() {
    local name="$1" i out
    for ((i = 0; i < 100; i++)); do
        if out="$(node_cli "$name" status --json 2>/dev/null)"; then
            echo "$out"
            return 0
        fi
        alive "$(pid_of "$name")" || die "$name exited; see $BASE/$name/log"
        sleep 0.2
    done
    die "$name did not open its control socket; see $BASE/$name/log"
}

write_node_config() {
    local name="$1" port="$2"
    local relay_addr relay_id rv_addr advertise="[]"
    if [[ " ${LOCALNET_UNREACHABLE:-} " == *" $name "* ]]; then
        advertise='["127.0.0.1:1"]'
    fi
    read -r relay_addr relay_id _quic <"$BASE/relay/data/relay.addr"
    rv_addr="$(head -n 1 "$BASE/rendezvous/data/rendezvous.addr")"
    cat >"$BASE/$name/config.toml" <<EOF
# Generated by scripts/localnet.sh
data_dir = "$BASE/$name/data"
username = "$name"

[log]
level = "sremp=debug,info"

[listen]
address = "127.0.0.1:$port"
advertise = $advertise
handshake_timeout_ms = 5000

[node]
relays = ["$relay_id@$relay_addr"]
delivery = "${LOCALNET_DELIVERY:-direct-first}"
direct_timeout_ms = 1000
ack_timeout_ms = 5000
retry_initial_ms = 300
retry_max_ms = 2000
lookup_interval_ms = 1000

[rendezvous]
servers = ["$RV_NAME@$rv_addr"]
ca_file = "$BASE/certs/ca.pem"
ttl_secs = 120
learn_servers = false
timeout_ms = 5000
EOF
}

cmd_up() {
    local n="${1:-2}"
    [[ "$n" =~ ^[0-9]+$ ]] && ((n >= 1 && n <= MAX_NODES)) || die "N must be 1..$MAX_NODES"
    if [[ -f "$PIDS" ]]; then
        local name pid
        while read -r name pid; do
            alive "$pid" && die "already up ($name is pid $pid); run: $0 down"
        done <"$PIDS"
        rm -f "$PIDS"
    fi
    find_bin
    mkdir -p "$BASE/certs" "$BASE/rendezvous" "$BASE/relay"
    chmod 700 "$BASE"
    rm -f "$NODES"

    "$BIN" certs --out "$BASE/certs" --name "$RV_NAME" >/dev/null

    # Rendezvous server. Every node connects from 127.0.0.1, so the per-IP limits are raised.
    rm -f "$BASE/rendezvous/data/rendezvous.addr"
    cat >"$BASE/rendezvous/config.toml" <<EOF
# Generated by scripts/localnet.sh
data_dir = "$BASE/rendezvous/data"
username = "rendezvous"
[log]
level = "info"
[rendezvous.server]
listen = "127.0.0.1:0"
server_name = "$RV_NAME"
cert_file = "$BASE/certs/$RV_NAME.pem"
key_file = "$BASE/certs/$RV_NAME-key.pem"
max_connections_per_ip = 256
requests_per_sec = 1000
request_burst = 1000
EOF
    mkdir -p "$BASE/rendezvous/data"
    chmod 700 "$BASE/rendezvous/data"
    spawn rendezvous rendezvous
    wait_file "$BASE/rendezvous/data/rendezvous.addr" rendezvous
    say "rendezvous server at $(head -n 1 "$BASE/rendezvous/data/rendezvous.addr")"

    # Relay-only node.
    rm -f "$BASE/relay/data/relay.addr"
    cat >"$BASE/relay/config.toml" <<EOF
# Generated by scripts/localnet.sh
data_dir = "$BASE/relay/data"
username = "relay"
[log]
level = "info"
[listen]
address = "127.0.0.1:0"
[relay]
stats_interval_secs = 10
EOF
    spawn relay relay
    wait_file "$BASE/relay/data/relay.addr" relay
    say "relay at $(cut -d' ' -f1 "$BASE/relay/data/relay.addr")"

    # Personal nodes: start on port 0, read the port back, pin it in the config.
    local i name status listen port
    for ((i = 1; i <= n; i++)); do
        name="node$i"
        mkdir -p "$BASE/$name"
        write_node_config "$name" 0
        spawn "$name" run
        status="$(wait_node "$name")"
        listen="$(json_field listen <<<"$status")"
        port="${listen##*:}"
        [[ "$port" =~ ^[0-9]+$ ]] || die "could not read $name's listen address from: $status"
        write_node_config "$name" "$port"
        echo "$name" >>"$NODES"
    done

    # Exchange contact cards (each running node's live card: real port and home relay).
    local a b card
    if [[ "${LOCALNET_INTRODUCE:-1}" != "0" ]]; then
        while read -r a; do
            card="$(node_cli "$a" id --json | json_field card)"
            [[ -n "$card" ]] || die "no card from $a"
            while read -r b; do
                [[ "$a" == "$b" ]] && continue
                node_cli "$b" contacts add "$card" >/dev/null
            done <"$NODES"
        done <"$NODES"
    fi

    echo "localnet up in $BASE"
    printf '%-12s %-64s %s\n' NAME ID DATA_DIR
    printf '%-12s %-64s %s\n' rendezvous "-" "$BASE/rendezvous/data"
    printf '%-12s %-64s %s\n' relay "$(cut -d' ' -f2 "$BASE/relay/data/relay.addr")" "$BASE/relay/data"
    while read -r a; do
        printf '%-12s %-64s %s\n' "$a" "$(node_cli "$a" id --json | json_field id)" "$BASE/$a/data"
    done <"$NODES"
    echo "use a node: $BIN --config $BASE/node1/config.toml status"
}

# Stops NAME (SIGTERM, SIGKILL after 10 s); bounded.
stop_one() {
    local name="$1" pid i
    pid="$(pid_of "$name")"
    if ! ours "$pid"; then
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        alive "$pid" || return 0
        sleep 0.1
    done
    say "$name (pid $pid) did not stop in 10 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        alive "$pid" || return 0
        sleep 0.1
    done
    say "$name (pid $pid) is still running"
}

cmd_down() {
    [[ -f "$PIDS" ]] || {
        say "nothing to stop (no $PIDS)"
        return 0
    }
    local name pid
    # Nodes first, then the relay and rendezvous server.
    while read -r name pid; do
        [[ "$name" == node* ]] && stop_one "$name"
    done <"$PIDS"
    while read -r name pid; do
        [[ "$name" == node* ]] || stop_one "$name"
    done <"$PIDS"
    rm -f "$PIDS"
    echo "localnet down (data and logs kept in $BASE)"
}

cmd_stop() {
    local name="${1:?usage: $0 stop NAME}"
    [[ -n "$(pid_of "$name")" ]] || die "unknown process $name"
    stop_one "$name"
    echo "$name stopped"
}

cmd_start() {
    local name="${1:?usage: $0 start NAME}"
    [[ -f "$BASE/$name/config.toml" ]] || die "no $name in $BASE"
    alive "$(pid_of "$name")" && die "$name is already running"
    case "$name" in
    node*)
        spawn "$name" run
        wait_node "$name" >/dev/null
        ;;
    relay) spawn relay relay ;;
    rendezvous) spawn rendezvous rendezvous ;;
    *) die "unknown process $name" ;;
    esac
    echo "$name started"
}

cmd_status() {
    [[ -f "$NODES" ]] || die "no localnet in $BASE"
    local name
    while read -r name; do
        echo "== $name"
        node_cli "$name" status || true
    done <"$NODES"
}

# The status of message ID in NAME's history (one JSON entry per line: --follow's format is
# not needed, `messages --json` is one array; split it at entry boundaries).
msg_field() {
    local name="$1" id="$2" field="$3"
    node_cli "$name" messages --json | sed 's/},{/}\n{/g' | grep "\"id\":\"$id\"" | json_field "$field"
}

# Waits (bounded: SECS) until message ID in NAME's history has status STATUS.
wait_status() {
    local name="$1" id="$2" want="$3" secs="$4" i got=""
    for ((i = 0; i < secs * 5; i++)); do
        got="$(msg_field "$name" "$id" status || true)"
        [[ "$got" == "$want" ]] && return 0
        sleep 0.2
    done
    die "message $id on $name: status '${got:-none}', wanted '$want' within ${secs}s"
}

cmd_demo() {
    [[ -f "$NODES" ]] || die "no localnet in $BASE; run: $0 up 2"
    (($(wc -l <"$NODES") >= 2)) || die "the demo needs at least 2 nodes"
    local a=node1 b=node2 id path
    alive "$(pid_of "$a")" || die "$a is not running"
    alive "$(pid_of "$b")" || cmd_start "$b" >/dev/null

    echo "== 1. direct: $a -> $b while both are online"
    id="$(node_cli "$a" send "$b" "hello $b, directly" --wait --timeout-secs 30)"
    path="$(msg_field "$a" "$id" path)"
    echo "message $id delivered (path: ${path:-?})"
    echo "$b received: $(msg_field "$b" "$id" text) (path: $(msg_field "$b" "$id" path))"

    echo "== 2. relay: $b goes offline, $a sends, $b comes back"
    stop_one "$b"
    echo "$b stopped"
    id="$(node_cli "$a" send "$b" "hello $b, through the relay while you were away")"
    echo "sent $id; waiting for the relay to store it"
    wait_status "$a" "$id" stored_at_relay 30
    echo "message $id: stored at relay"
    cmd_start "$b" >/dev/null
    echo "$b started again; waiting for delivery"
    wait_status "$a" "$id" delivered 30
    echo "message $id delivered (path: $(msg_field "$a" "$id" path))"
    echo "$b received: $(msg_field "$b" "$id" text) (path: $(msg_field "$b" "$id" path))"

    echo "== 3. reply: $b -> $a"
    id="$(node_cli "$b" send "$a" "hi $a, $b is back" --wait --timeout-secs 30)"
    echo "message $id delivered (path: $(msg_field "$b" "$id" path))"
    local u
    for u in ${LOCALNET_UNREACHABLE:-}; do
        [[ "$u" == "$a" ]] && continue
        alive "$(pid_of "$u")" || continue
        echo "== 4. unreachable: $u is online but advertises 127.0.0.1:1; $a -> $u"
        id="$(node_cli "$a" send "$u" "hello $u, you are unreachable" --wait --timeout-secs 30)"
        echo "message $id delivered (path: $(msg_field "$a" "$id" path))"
    done
    echo "demo done; history: $BIN --config $BASE/$a/config.toml messages"
}

main() {
    local cmd="${1:-}"
    shift || true
    case "$cmd" in
    up) cmd_up "$@" ;;
    down) cmd_down ;;
    demo)
        find_bin
        cmd_demo
        ;;
    status)
        find_bin
        cmd_status
        ;;
    stop) cmd_stop "$@" ;;
    start)
        find_bin
        cmd_start "$@"
        ;;
    *)
        sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        [[ -z "$cmd" || "$cmd" == help || "$cmd" == -h || "$cmd" == --help ]] || exit 2
        ;;
    esac
}

main "$@"
