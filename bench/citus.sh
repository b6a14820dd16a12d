#!/usr/bin/env bash
# bench/citus.sh: data_drip on a 3-node Citus cluster (a coordinator and 2 workers on this
# machine), contenders side by side, alternated, every row checked exactly once after each.
#
#   bench/citus.sh                          # pgbench -s 10 (1,000,000 rows), 2 rounds
#   BENCH_ROUNDS=1 BENCH_TPS_SECONDS=10 bench/citus.sh
#
# Every node runs with fsync and synchronous_commit on (the defaults), autovacuum off; before
# each contender the table is vacuumed and every node checkpointed.
# Contenders (the action is SET abalance = abalance + 1, sleep 0):
#   local-1k       the same backfill on a plain table on the coordinator (one node), batch 1,000
#   shards-1k      pgbench_accounts hash-distributed over 32 shards on 2 workers: one sub-run per
#                  shard, drip.max_runs_per_node = 1 (the default), batch 1,000
#   shards-1k-x2   the same with drip.max_runs_per_node = 2 (drip.max_runs = 4)
#   walk-1k        drip.citus_sub_runs = off: one walk from the coordinator, every batch reaching
#                  every shard (the 0.2.0 design, with its plans fixed)
#   local-10k, shards-10k   batch 10,000
# Rows/s is rows over the wall time from drip.start to drip.wait returning.
# Then live traffic: pgbench (2 clients, single-row UPDATE + SELECT by aid through the
# coordinator) against the distributed table, alone and with a default backfill (batch 1,000,
# sleep 100 ms) running over and over; the TPS ratio is reported.
#
# Needs Citus (scripts/citus.sh builds it) and the release build of the extension, both in the
# PostgreSQL of $PG_CONFIG.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
ROOT="$(drip_root)"
cd "$ROOT"

# BENCH_PG_CONFIG: another PostgreSQL installation (with Citus and the extension installed).
if [[ -n "${BENCH_PG_CONFIG:-}" ]]; then
    PG_CONFIG="$BENCH_PG_CONFIG"
    PG_BIN="$("$PG_CONFIG" --bindir)"
fi
ROUNDS="${BENCH_ROUNDS:-2}"
TPS_SECONDS="${BENCH_TPS_SECONDS:-20}"
SCALE="${BENCH_SCALE:-10}"
BASE="$ROOT/target/bench-citus"

if [[ -z "${BENCH_NO_INSTALL:-}" ]]; then
    ensure_deps
    out="$(bash scripts/citus.sh "$PG_CONFIG" | tail -n 1)"
    [[ "$out" == skipped ]] && drip_die "Citus sources not found: cannot run the Citus benchmark"
    DRIP_INSTALL_PROFILE=release install_extension
fi

# --- the cluster -------------------------------------------------------------------------------
NODES=(coord w1 w2)
declare -A PORT
start_node() {
    local name="$1" dir="$BASE/$1"
    stop_pgdata "$dir/data" || true
    rm -rf "$dir"
    mkdir -p "$dir/data" "$BASE/sock"
    chmod 700 "$dir/data"
    if is_root; then chown -R postgres: "$BASE"; ensure_traversable "$BASE"; fi
    as_owner "$PG_BIN/initdb" -D "$dir/data" -U "$(cluster_owner)" --auth=trust -E UTF8 --locale=C \
        --no-sync >"$dir/initdb.log" 2>&1
    PORT[$name]="$(free_port)"
    cat >>"$dir/data/postgresql.conf" <<EOF
port = ${PORT[$name]}
listen_addresses = '127.0.0.1'
unix_socket_directories = '$BASE/sock'
shared_preload_libraries = 'citus,data_drip'
max_worker_processes = 64
max_connections = 200
max_prepared_transactions = 200
shared_buffers = 256MB
autovacuum = off
drip.launcher_interval = 1
EOF
    as_owner "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 start >/dev/null
    drip_on_exit "stop_pgdata '$dir/data'"
}
q() { # q NODE SQL...
    local node="$1"
    shift
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -At -h "$BASE/sock" -p "${PORT[$node]}" \
        -U "$(cluster_owner)" -d postgres "$@"
}

for n in "${NODES[@]}"; do start_node "$n"; done
for n in "${NODES[@]}"; do q "$n" -c "CREATE EXTENSION citus"; done
q coord -c "SELECT citus_set_coordinator_host('127.0.0.1', ${PORT[coord]})" >/dev/null
q coord -c "SELECT citus_add_node('127.0.0.1', ${PORT[w1]})" -c "SELECT citus_add_node('127.0.0.1', ${PORT[w2]})" >/dev/null
q coord -c "CREATE EXTENSION data_drip"

drip_log "loading pgbench -s $SCALE"
"$PG_BIN/pgbench" -q -i -s "$SCALE" -h "$BASE/sock" -p "${PORT[coord]}" -U "$(cluster_owner)" postgres \
    >"$BASE/pgbench-init.log" 2>&1
ROWS="$(q coord -c "SELECT count(*) FROM pgbench_accounts")"
q coord <<'SQL'
CREATE TABLE local_accounts (LIKE pgbench_accounts INCLUDING ALL);
INSERT INTO local_accounts SELECT * FROM pgbench_accounts;
SELECT create_distributed_table('pgbench_accounts', 'aid', shard_count => 32) \g /dev/null
VACUUM ANALYZE local_accounts;
VACUUM ANALYZE pgbench_accounts;
SQL

# contender NAME TABLE BATCH [SETTINGS SQL]: one backfill over TABLE, timed from start to wait.
declare -A RPS
contender() {
    local name="$1" table="$2" batch="$3" settings="${4:-}"
    # Only our settings: Citus keeps its own (ssl = on) in postgresql.auto.conf too.
    q coord -c "ALTER SYSTEM RESET drip.max_runs" -c "ALTER SYSTEM RESET drip.max_runs_per_node" >/dev/null
    if [[ -n "$settings" ]]; then q coord <<<"$settings" >/dev/null; fi
    q coord -c "SELECT pg_reload_conf()" >/dev/null
    # Same start for every contender: the table vacuumed, every node checkpointed.
    q coord -c "VACUUM $table" >/dev/null
    for n in "${NODES[@]}"; do q "$n" -c "CHECKPOINT" >/dev/null; done
    sleep 0.5
    local out
    out="$(q coord <<SQL
SET drip.citus_sub_runs = $([[ "$name" == walk-* ]] && echo off || echo on);
SELECT drip.register('b_$name', '$table', action => 'SET abalance = abalance + 1',
                     batch_size => $batch, sleep => '0', replace => true) \g /dev/null
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
SELECT drip.start('b_$name') AS run \gset
SELECT drip.wait(:run, timeout => '30 min') \g /dev/null
SELECT round(rows_done / (extract(epoch FROM clock_timestamp()) - :t0)) || ' ' || rows_done || ' ' || parallel
  FROM drip.runs WHERE id = :run;
SQL
)"
    local rps done parallel
    read -r rps done parallel <<<"$out"
    local bad
    bad="$(q coord -c "SELECT count(*) FROM $table WHERE abalance <> $(expected_of "$table")")"
    [[ "$done" == "$ROWS" && "$bad" == 0 ]] ||
        drip_die "$name: rows_done $done of $ROWS, $bad rows not exactly +1"
    RPS[$name]="${RPS[$name]:-} $rps"
    drip_log "$name: $rps rows/s (sub-runs: $parallel)"
}
declare -A DONE_ON
expected_of() { echo "${DONE_ON[$1]:-0}"; }
bump() { DONE_ON[$1]=$((${DONE_ON[$1]:-0} + 1)); }

run_contender() {
    local name="$1" table="$2"
    bump "$table"
    contender "$@"
}

ORDER=(local-1k shards-1k shards-1k-x2 walk-1k local-10k shards-10k)
declare -A ARGS=(
    [local-1k]="local_accounts 1000"
    [shards-1k]="pgbench_accounts 1000"
    [shards-1k-x2]="pgbench_accounts 1000"
    [walk-1k]="pgbench_accounts 1000"
    [local-10k]="local_accounts 10000"
    [shards-10k]="pgbench_accounts 10000"
)
declare -A SETTINGS=(
    [shards-1k-x2]="ALTER SYSTEM SET drip.max_runs_per_node = 2; ALTER SYSTEM SET drip.max_runs = 4"
)
for ((r = 1; r <= ROUNDS; r++)); do
    if ((r % 2 == 1)); then list=("${ORDER[@]}"); else
        list=()
        for ((i = ${#ORDER[@]} - 1; i >= 0; i--)); do list+=("${ORDER[$i]}"); done
    fi
    for name in "${list[@]}"; do
        read -r table batch <<<"${ARGS[$name]}"
        run_contender "$name" "$table" "$batch" "${SETTINGS[$name]:-}"
    done
done

# --- live traffic -------------------------------------------------------------------------------
cat >"$BASE/traffic.sql" <<EOF
\\set aid random(1, $ROWS)
UPDATE pgbench_accounts SET filler = 'x' WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
EOF
chmod 644 "$BASE/traffic.sql"
tps() {
    "$PG_BIN/pgbench" -n -c 2 -j 2 -T "$TPS_SECONDS" -f "$BASE/traffic.sql" \
        -h "$BASE/sock" -p "${PORT[coord]}" -U "$(cluster_owner)" postgres 2>/dev/null |
        sed -nE 's/^tps = ([0-9.]+).*/\1/p'
}
q coord -c "ALTER SYSTEM RESET drip.max_runs" -c "ALTER SYSTEM RESET drip.max_runs_per_node" -c "SELECT pg_reload_conf()" >/dev/null
q coord -c "SELECT drip.register('traffic', 'pgbench_accounts', action => 'SET abalance = abalance + 1', replace => true)" >/dev/null
declare -a TPS_ALONE=() TPS_WITH=()
for ((r = 1; r <= ROUNDS; r++)); do
    TPS_ALONE+=("$(tps)")
    # A default backfill (batch 1,000, sleep 100 ms), started again whenever it completes.
    (
        end=$((SECONDS + TPS_SECONDS + 2))
        while ((SECONDS < end)); do
            q coord -c "SELECT drip.wait(drip.start('traffic'), timeout => '10 min')" >/dev/null 2>&1 || true
        done
    ) &
    looper=$!
    sleep 1
    TPS_WITH+=("$(tps)")
    kill "$looper" 2>/dev/null || true
    wait "$looper" 2>/dev/null || true
    q coord -c "SELECT drip.stop(id) FROM drip.runs WHERE backfill = 'traffic' AND status IN ('enqueued','running','paused')" >/dev/null || true
done

# --- report ---------------------------------------------------------------------------------
mean() { awk '{s=0; for (i=1;i<=NF;i++) s+=$i; printf "%.0f", s/NF}' <<<"$*"; }
printf '\n### Citus: %s rows (pgbench -s %s), coordinator + 2 workers on this machine, %s rounds\n\n' "$ROWS" "$SCALE" "$ROUNDS"
printf '| contender | rows/s (each round) | mean |\n|---|---|---|\n'
for name in "${ORDER[@]}"; do
    printf '| %s |%s | %s |\n' "$name" "${RPS[$name]}" "$(mean "${RPS[$name]}")"
done
ratio() { awk -v a="$(mean "$1")" -v b="$(mean "$2")" 'BEGIN { printf "%.2f", a / b }'; }
printf '\n| ratio | value |\n|---|---|\n'
printf '| shards-1k / local-1k | %s |\n' "$(ratio "${RPS[shards-1k]}" "${RPS[local-1k]}")"
printf '| shards-1k / walk-1k | %s |\n' "$(ratio "${RPS[shards-1k]}" "${RPS[walk-1k]}")"
printf '| shards-1k-x2 / shards-1k | %s |\n' "$(ratio "${RPS[shards-1k-x2]}" "${RPS[shards-1k]}")"
printf '| shards-10k / local-10k | %s |\n' "$(ratio "${RPS[shards-10k]}" "${RPS[local-10k]}")"
printf '\n| live traffic (pgbench TPS) | each round | mean |\n|---|---|---|\n'
printf '| alone | %s | %s |\n' "${TPS_ALONE[*]}" "$(mean "${TPS_ALONE[*]}")"
printf '| with a default backfill | %s | %s |\n' "${TPS_WITH[*]}" "$(mean "${TPS_WITH[*]}")"
printf '| ratio | | %s |\n' "$(ratio "${TPS_WITH[*]}" "${TPS_ALONE[*]}")"
