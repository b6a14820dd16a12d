#!/usr/bin/env bash
# bench/undo.sh: undo on vs off and the revert (issue 19) on a throwaway cluster
# (target/bench-undo) with fsync, synchronous_commit and full_page_writes on, the release build
# installed into the system PostgreSQL, and pgbench_accounts at scale BENCH_SCALE (default 10,
# 1,000,000 rows). Prints bench/undo.sql's tables.
#
#   bench/undo.sh
#   BENCH_SCALE=2 bench/undo.sh
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
ROOT="$(drip_root)"
cd "$ROOT"

ensure_deps
if [[ -z "${BENCH_NO_INSTALL:-}" ]]; then
    DRIP_INSTALL_PROFILE=release install_extension
fi
cluster_start bench-undo ""
# Durable like production: the cluster_start defaults are for tests.
psql_as -q -c "ALTER SYSTEM SET fsync = on" -c "ALTER SYSTEM SET synchronous_commit = on" \
    -c "ALTER SYSTEM SET full_page_writes = on" -c "ALTER SYSTEM SET max_wal_size = '4GB'" >/dev/null
as_owner "$PG_BIN/pg_ctl" -D "$DRIP_PGDATA" -l "$DRIP_CLUSTER_DIR/postgres.log" -w restart >/dev/null
psql_as -q -c "CREATE DATABASE bench" >/dev/null
with_cluster "$PG_BIN/pgbench" -q -i -s "${BENCH_SCALE:-10}" bench >/dev/null 2>&1
psql_as -q -d bench -c "CREATE EXTENSION data_drip" >/dev/null
psql_as -d bench -f bench/undo.sql
cluster_stop bench-undo
