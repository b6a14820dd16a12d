#!/usr/bin/env bash
# bench/run.sh: the one command that runs the data_drip benchmarks on a throwaway cluster
# (target/bench) and prints Markdown tables (the source of BENCHMARKS.md).
#
#   bench/run.sh                                  # pgbench -s 10, 2 alternating rounds
#   BENCH_SCALES="10 100" bench/run.sh            # adds the scaling run at -s 100
#   BENCH_ROUNDS=1 BENCH_TPS_SECONDS=10 bench/run.sh   # a quick look
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
ROOT="$(drip_root)"
cd "$ROOT"

ensure_deps
# Benchmarks measure the release build.
DRIP_INSTALL_PROFILE=release install_extension
cargo build --release --manifest-path bench/Cargo.toml
exec "$ROOT/bench/target/release/data_drip_bench"
