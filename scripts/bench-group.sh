#!/usr/bin/env bash
# Time until every member of a 10-member group on a loopback localnet has a group message.
#
#   scripts/bench-group.sh [MESSAGES]     (default 50 messages, one every 100 ms)
#
# Starts scripts/localnet.sh with 10 nodes and its relay (LOCALNET_DIR: a fresh temporary
# directory), node1 creates a group with node2..node10, every member accepts, then node1 sends
# MESSAGES group messages. For each message the figure is the largest, over the nine members,
# of (the member's `recorded_at` - the author's `sent_at`): both clocks are this machine's.
# Prints p50, p99 and max in ms, and tears the localnet down. Needs python3.
# Environment: SREMP_BIN (default: cargo build --release), LOCALNET_DELIVERY (default race).
set -euo pipefail

N_MSG="${1:-50}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export LOCALNET_DIR="${LOCALNET_DIR:-$(mktemp -d /tmp/sremp-bench-group.XXXXXX)}"
export LOCALNET_DELIVERY="${LOCALNET_DELIVERY:-race}"
LN="$ROOT/scripts/localnet.sh"
MEMBERS=10

cleanup() { "$LN" down >/dev/null 2>&1 || true; }
trap cleanup EXIT

if [[ -z "${SREMP_BIN:-}" ]]; then
    (cd "$ROOT" && cargo build --release --quiet)
    SREMP_BIN="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release/sremp"
    export SREMP_BIN
fi
cli() {
    local n="$1"
    shift
    "$SREMP_BIN" --config "$LOCALNET_DIR/$n/config.toml" "$@" </dev/null
}

"$LN" up "$MEMBERS" >/dev/null
members="$(seq -s, -f 'node%g' 2 "$MEMBERS")"
gid="$(cli node1 group create bench --members "$members" --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
echo "bench-group: group $gid with node1..node$MEMBERS" >&2

# Every member gets the invitation and accepts (bounded waits).
for i in $(seq 2 "$MEMBERS"); do
    for _ in $(seq 1 200); do
        cli "node$i" group show "$gid" --json >/dev/null 2>&1 && break
        sleep 0.1
    done
    cli "node$i" group accept "$gid" --json >/dev/null
done
# Until node1 has seen every acceptance (bounded).
for _ in $(seq 1 300); do
    n="$(cli node1 group show "$gid" --json |
        python3 -c 'import json,sys; print(sum(m["state"]=="accepted" for m in json.load(sys.stdin)["members"]))')"
    [[ "$n" == "$MEMBERS" ]] && break
    sleep 0.1
done
[[ "$n" == "$MEMBERS" ]] || { echo "bench-group: only $n members accepted" >&2; exit 1; }

for i in $(seq 1 "$N_MSG"); do
    cli node1 send --group "$gid" "bench $i" >/dev/null
    sleep 0.1
done

# Wait (bounded: 60 s) until every member has every message, then compute.
python3 - "$SREMP_BIN" "$LOCALNET_DIR" "$gid" "$MEMBERS" "$N_MSG" <<'PY'
import json, subprocess, sys, time
binp, base, gid, members, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
def entries(node):
    out = subprocess.run([binp, "--config", f"{base}/{node}/config.toml", "messages", "--group", gid, "--json"],
                         capture_output=True, check=True).stdout
    return [e for e in json.loads(out) if e["direction"] == "in" and (e.get("group") or {}).get("kind") == "message"]
deadline = time.time() + 60
while True:
    got = {f"node{i}": entries(f"node{i}") for i in range(2, members + 1)}
    if all(len({e["text"] for e in es}) >= n for es in got.values()):
        break
    if time.time() > deadline:
        sys.exit("bench-group: not every member got every message: " +
                 str({k: len(v) for k, v in got.items()}))
    time.sleep(0.5)
worst = {}
for es in got.values():
    for e in es:
        d = e["recorded_at"] - e["sent_at"]
        worst[e["text"]] = max(worst.get(e["text"], 0), d)
xs = sorted(worst.values())
pick = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))]
print(f"bench-group: {len(xs)} messages, {members} members: time until all members have it "
      f"p50 {pick(0.50)} ms, p99 {pick(0.99)} ms, max {xs[-1]} ms")
PY
