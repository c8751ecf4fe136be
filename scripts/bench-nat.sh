#!/usr/bin/env bash
# NAT lab figures (tests/nat_lab.rs, ignored test `nat_bench_table`): for each combination of
# router behaviours (cone = MASQUERADE, symmetric = MASQUERADE --random-fully) it runs TRIALS
# fresh node pairs, sends one message and waits up to 15 s for a punched direct QUIC path.
# Prints a table: combination, punched / trials, median and max time from the first message to
# the punched path.
#
#   scripts/bench-nat.sh [TRIALS]     (default 10)
#
# Needs root, iproute2 and iptables (skips with a message otherwise).
set -euo pipefail
TRIALS="${1:-10}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
out="$(mktemp /tmp/sremp-bench-nat.XXXXXX)"
trap 'rm -f "$out"' EXIT
status=0
NAT_BENCH_TRIALS="$TRIALS" cargo test --quiet --test nat_lab nat_bench_table \
    -- --ignored --nocapture >"$out" 2>&1 || status=$?
grep -E "^(NAT-BENCH|skipping)" "$out" || { tail -50 "$out"; }
exit "$status"
