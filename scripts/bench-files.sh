#!/usr/bin/env bash
# File transfer: peak memory (VmHWM) of the sending and the receiving node while a 1 GiB file
# goes over the direct path, and the throughput of that transfer, with the release binary.
# Then (unless SKIP_SNOW=1) the in-process comparison with raw snow over TCP in one run
# (`cargo bench --bench files`).
#
# Two `sremp run` nodes on 127.0.0.1 with temp data dirs; the recipient trusts the sender and
# auto-accepts. Loopback only; bounded waits; everything is removed at the end.
#
# Usage: scripts/bench-files.sh [MiB=1024]   (SREMP_BIN=path: use that binary, no build;
#        SKIP_SNOW=1: no cargo bench afterwards)
set -euo pipefail
MIB="${1:-1024}"
cd "$(dirname "$0")/.."
# SREMP_BIN: a release binary built elsewhere (e.g. with CARGO_TARGET_DIR); no build then.
if [ -n "${SREMP_BIN:-}" ]; then
  BIN="$SREMP_BIN"
else
  [ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release --bin sremp >/dev/null
  BIN=./target/release/sremp
fi
DIR=$(mktemp -d "${FILES_BENCH_DIR:-/tmp}/sremp-files.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$DIR"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
node() { # name files-section
  cat >"$DIR/$1.toml" <<TOML
data_dir = "$DIR/$1"
username = "$1"
[log]
level = "warn"
[listen]
address = "127.0.0.1:$(port)"
[files]
$2
TOML
  "$BIN" --config "$DIR/$1.toml" run 2>"$DIR/$1.log" &
  PIDS+=($!)
  for _ in $(seq 1 300); do [ -S "$DIR/$1/control.sock" ] && return; sleep 0.1; done
  echo "node $1 did not start" >&2; cat "$DIR/$1.log" >&2; exit 1
}
node alice ""
A=${PIDS[0]}
node bob "auto_accept_trusted_max_bytes = 1000000000000"
B=${PIDS[1]}
sa() { "$BIN" --config "$DIR/alice.toml" "$@"; }
sb() { "$BIN" --config "$DIR/bob.toml" "$@"; }
json() { python3 -c "import sys,json; print(json.load(sys.stdin)$1)"; }
A_ID=$(sa id --json | json "['id']")
B_ID=$(sb id --json | json "['id']")
sa contacts add "$(sb id --json | json "['card']")" >/dev/null
sb contacts add "$(sa id --json | json "['card']")" >/dev/null
sb contacts trust "$A_ID" >/dev/null
echo "writing a ${MIB} MiB source file..."
head -c "$((MIB * 1024 * 1024))" /dev/urandom >"$DIR/source.bin"
hwm() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
echo "before: alice VmHWM $(hwm "$A") KiB, bob VmHWM $(hwm "$B") KiB"
START=$(date +%s.%N)
sa send-file "$B_ID" "$DIR/source.bin" --json | tail -1 >"$DIR/last.json"
END=$(date +%s.%N)
STATE=$(json "['state']" <"$DIR/last.json")
[ "$STATE" = done ] || { echo "transfer ended $STATE" >&2; cat "$DIR/last.json" >&2; exit 1; }
SAVED=$(sb files --json | python3 -c "import sys,json; print([t for t in json.load(sys.stdin) if t['state']=='done'][0]['path'])")
cmp -s "$DIR/source.bin" "$SAVED" && echo "received copy identical"
python3 - "$START" "$END" "$MIB" <<PY
import sys
s, e, mib = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
print(f"{mib} MiB in {e - s:.1f} s end to end (hash, offer, chunks, verify, save): {mib * 1048576 / (e - s) / 1e6:.1f} MB/s")
PY
echo "peak RSS (VmHWM): alice (sender) $(hwm "$A") KiB, bob (recipient) $(hwm "$B") KiB"
rm -f "$DIR/source.bin" "$SAVED"
if [ "${SKIP_SNOW:-0}" != 1 ]; then
  FILES_BENCH_MIB="${SNOW_MIB:-256}" cargo bench --bench files 2>/dev/null
fi
