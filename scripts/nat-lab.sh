#!/usr/bin/env bash
# The NAT lab, many trials: two home networks behind cone (MASQUERADE) routers and a public
# network with two relays (tests/common/natlab.rs), real `sremp run` nodes in namespaces. Each
# trial starts a fresh pair of nodes, sends one message (through a relay), waits for the
# background hole punch and checks that the next message takes the direct QUIC path.
#
#   scripts/nat-lab.sh [TRIALS]     (default 20)
#
# Prints the success count and the time from the first message to the punched path (median
# and every trial). Needs root, iproute2 and iptables; skips with a message otherwise. Cleans
# its namespaces up even when a trial fails. With NAT_LAB_DUMP=DIR set, each trial writes both
# nodes' debug logs to DIR/t<i>-{a,b}.log (to see where a slow punch spends its time).
set -euo pipefail
TRIALS="${1:-20}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
out="$(mktemp /tmp/sremp-nat-lab.XXXXXX)"
trap 'rm -f "$out"' EXIT
status=0
NAT_LAB_TRIALS="$TRIALS" NAT_LAB_DUMP="${NAT_LAB_DUMP:-}" cargo test --quiet --test nat_lab cone_nats_end_on_a_direct_quic_path \
    -- --nocapture >"$out" 2>&1 || status=$?
grep -E "^(NAT-LAB|skipping)" "$out" || { tail -50 "$out"; }
exit "$status"
