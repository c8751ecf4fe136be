#!/usr/bin/env bash
# Runs every cargo-fuzz target for N seconds each (default 60) and prints a summary.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Seeds come from
# fuzz/corpus/<target>/; inputs that libFuzzer finds new coverage with are written to a scratch
# copy (FUZZ_WORK, default a temp dir), so the checked-in seed corpus stays small. Crashes land in
# fuzz/artifacts/<target>/: copy a reproducer into fuzz/corpus/<target>/ (as crash-<name>) and
# tests/fuzz_corpus.rs replays it on every `cargo test`.
# The fuzz crate builds in its own target dir (CARGO_TARGET_DIR, default target/fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
shift || true
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cd fuzz && cargo +nightly fuzz list)
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/fuzz}"
work="${FUZZ_WORK:-$(mktemp -d)}"
summary=()
status=0
for t in "${targets[@]}"; do
  mkdir -p "$work/$t"
  log="$work/$t.log"
  echo "== $t: ${secs}s"
  # -rss_limit_mb: the entry functions bound their own memory; 2 GB catches a runaway.
  if cargo +nightly fuzz run "$t" "$work/$t" "fuzz/corpus/$t" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
      >"$log" 2>&1; then
    result=ok
  else
    result=CRASH
    status=1
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
  speed=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
  summary+=("$(printf '%-22s %-6s execs=%-10s exec/s=%-8s %s' "$t" "$result" "${execs:-?}" "${speed:-?}" "$cov")")
  if [ "$result" = CRASH ]; then
    grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -20 || true
  fi
done
echo
printf '%s\n' "${summary[@]}"
echo "logs and grown corpora: $work"
exit "$status"
