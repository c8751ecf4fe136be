#!/usr/bin/env bash
# Memory per idle authenticated relay connection.
#
# Starts a release `sremp relay` on 127.0.0.1 (temp data dir), records its RSS, opens N
# registered idle connections from the relay bench binary (RELAY_MEM_* mode), records the RSS
# again while they are held, and prints (after - before) / N. Loopback only; bounded waits.
#
# Usage: scripts/bench-relay-memory.sh [N=10000]
set -euo pipefail
N="${1:-10000}"
cd "$(dirname "$0")/.."
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release --bin sremp >/dev/null
BENCH=$(cargo bench --bench relay --no-run --message-format=json 2>/dev/null \
  | grep -o '"executable":"[^"]*relay-[^"]*"' | tail -1 | cut -d'"' -f4)
DIR=$(mktemp -d)
trap 'kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$DIR"' EXIT
cat >"$DIR/relay.toml" <<TOML
data_dir = "$DIR/data"
username = "relay"
[log]
level = "warn"
[listen]
address = "127.0.0.1:0"
max_connections = $((N + 1000))
idle_timeout_secs = 3600
[relay]
rate_per_sec = 100000
rate_burst = 100000
TOML
./target/release/sremp --config "$DIR/relay.toml" relay &
PID=$!
for _ in $(seq 1 300); do [ -s "$DIR/data/relay.addr" ] && break; sleep 0.1; done
read -r ADDR ID _QUIC <"$DIR/data/relay.addr"
sleep 1
rss() { awk '/VmRSS/ {print $2}' "/proc/$PID/status"; }
BEFORE=$(rss)
RELAY_MEM_ADDR="$ADDR" RELAY_MEM_ID="$ID" RELAY_MEM_CONNS="$N" RELAY_MEM_HOLD_SECS=15 "$BENCH" &
CLIENT=$!
for _ in $(seq 1 1200); do
  [ "$(ls /proc/$PID/fd | wc -l)" -ge "$N" ] && break
  sleep 0.5
done
sleep 5
AFTER=$(rss)
FDS=$(ls /proc/$PID/fd | wc -l)
echo "relay RSS before: ${BEFORE} KiB, with ${FDS} fds (~${N} connections): ${AFTER} KiB"
echo "per connection: $(( (AFTER - BEFORE) * 1024 / N )) bytes"
wait "$CLIENT" || true
