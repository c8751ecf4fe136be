#!/usr/bin/env bash
# Relay cluster benchmark (issue 17): durable stores/s, store latency p50/p99 and forwarding
# messages/s of a 3-node NATS JetStream cluster (two relay processes) beside the embedded sled
# relay, in one run. Needs nats-server (apt-get install nats-server); without it only the
# embedded relay is measured. Loopback only; every server is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --bench cluster "$@"
