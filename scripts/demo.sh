#!/usr/bin/env bash
# scripts/demo.sh: build and install data_drip, then run a real backfill on a
# throwaway cluster (target/demo) and show it live:
#   - 1,000,000 users with mixed-case emails; backfill "fix_emails" lowercases
#     the emails of age = 30 (12,500 rows) in batches of 5000;
#   - a LISTEN client records the drip_events notifications;
#   - a progress line is redrawn every 0.3 s from drip.progress;
#   - a summary verifies the result and counts the events.
# It exits on its own (non-zero if the run fails, times out or the result is
# wrong), stopping the cluster and leaving target/demo for inspection.
#
# Knobs: DRIP_DEMO_ROWS (1000000), DRIP_DEMO_TIMEOUT seconds (600),
#        DRIP_DEMO_PORT (a free port), DRIP_INSTALL_PROFILE (release|dev).
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROOT="$(drip_root)"
cd "$ROOT"

DB=drip_demo
ROWS="${DRIP_DEMO_ROWS:-1000000}"
TIMEOUT="${DRIP_DEMO_TIMEOUT:-600}"
LISTENER_APP=drip_demo_listener

# psql on the demo database: unaligned, tuples only, quiet; one value per line.
sql() { psql_as -d "$DB" -XAtq "$@"; }

now() { date +%s.%N; }
# elapsed START [END]: seconds between two `now` values, to 0.01 s.
elapsed() { awk -v a="$1" -v b="${2:-$(now)}" 'BEGIN { printf "%.2f", b - a }'; }

# No --with-lint: the demo does not need rustfmt or clippy.
# shellcheck disable=SC2119
ensure_deps
install_extension
cluster_start demo "${DRIP_DEMO_PORT:-}"
DEMO_DIR="$DRIP_CLUSTER_DIR"

# ---------------------------------------------------------------------------
# Schema and data
# ---------------------------------------------------------------------------
drip_log "creating database $DB and $ROWS users"
psql_as -q -c "CREATE DATABASE $DB"
sql -c "CREATE EXTENSION data_drip"
sql <<SQL
CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL, age int NOT NULL);
INSERT INTO users (email, age)
SELECT 'User' || g || '@Example.COM', g % 80 FROM generate_series(1, $ROWS) AS g;
ANALYZE users;
SQL

drip_log "registering backfill fix_emails"
# Quoted heredoc: \$age is a drip parameter, not a shell variable.
sql >/dev/null <<'SQL'
SELECT drip.register('fix_emails', 'users',
                     action => 'SET email = lower(email)',
                     scope => 'age = $age',
                     params => '{"age": "integer"}',
                     batch_size => 5000,
                     sleep => '10 milliseconds');
SQL

# ---------------------------------------------------------------------------
# LISTEN client
# ---------------------------------------------------------------------------
# psql only prints notifications after it runs a statement, so a generator
# feeds it a cheap statement every 0.2 s until the stop file appears. The
# generator sleeps in the shell: queuing statements faster would leave psql
# with a backlog to chew through after we ask it to stop.
EVENTS_RAW="$DEMO_DIR/events.raw"
EVENTS="$DEMO_DIR/events.jsonl"
LISTENER_STOP="$DEMO_DIR/listener.stop"
rm -f "$EVENTS_RAW" "$EVENTS" "$LISTENER_STOP"

listener_feed() {
    printf 'LISTEN drip_events;\n'
    while [[ ! -e "$LISTENER_STOP" ]]; do
        # The marker lets us see in pg_stat_activity that LISTEN is done.
        printf "SELECT 'drip-demo-listening';\n"
        sleep 0.2
    done
}

listener_feed | psql_as -Atq -d "dbname=$DB application_name=$LISTENER_APP" \
    >"$EVENTS_RAW" 2>"$DEMO_DIR/listener.err" &
LISTENER_PID=$!

# stop_listener: let psql drain and exit (EOF on stdin), kill it if it hangs.
stop_listener() {
    [[ -n "${LISTENER_PID:-}" ]] || return 0
    touch "$LISTENER_STOP"
    local i
    for ((i = 0; i < 50; i++)); do
        kill -0 "$LISTENER_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill "$LISTENER_PID" 2>/dev/null || true
    wait "$LISTENER_PID" 2>/dev/null || true
    LISTENER_PID=""
}
# Registered after cluster_start, so it runs before the cluster is stopped.
drip_on_exit stop_listener

deadline=$((SECONDS + 30))
until [[ "$(sql -c "SELECT count(*) FROM pg_stat_activity
                     WHERE application_name = '$LISTENER_APP'
                       AND query LIKE '%drip-demo-listening%'")" -ge 1 ]]; do
    kill -0 "$LISTENER_PID" 2>/dev/null || {
        cat "$DEMO_DIR/listener.err" >&2
        drip_die "the LISTEN client exited"
    }
    ((SECONDS < deadline)) || drip_die "the LISTEN client did not start within 30 s"
    sleep 0.1
done
drip_log "listening on drip_events"

# ---------------------------------------------------------------------------
# Run and progress
# ---------------------------------------------------------------------------
T0="$(now)"
RUN="$(sql -c "SELECT drip.start('fix_emails', '{\"age\": 30}')")"
[[ "$RUN" =~ ^[0-9]+$ ]] || drip_die "drip.start returned '$RUN', expected a run id"
drip_log "started run $RUN"

# A tty gets one line redrawn with \r; logs (CI) get a line every 2 s instead.
if [[ -t 1 ]]; then TTY=1; else TTY=0; fi
BAR_WIDTH=30
last_print=-1
status=""

draw_progress() {
    local status="$1" rows_done="${2:-0}" rows_est="$3" percent="$4" rps="${5:-0}" batches="${6:-0}" bar="$7"
    local pct_txt="  ?  %"
    if [[ -n "$percent" ]]; then pct_txt="$(printf '%5.1f%%' "$percent")"; fi
    # drip.progress's bar already ends with the percentage.
    if [[ "$bar" == *%* ]]; then pct_txt=""; fi
    if [[ -z "$bar" ]]; then
        # The view has no bar: draw one from percent.
        local filled=0
        if [[ -n "$percent" ]]; then
            filled="$(awk -v p="$percent" -v w="$BAR_WIDTH" 'BEGIN { f = int(p * w / 100); if (f > w) f = w; if (f < 0) f = 0; print f }')"
        fi
        bar="[$(printf '%*s' "$filled" '' | tr ' ' '#')$(printf '%*s' $((BAR_WIDTH - filled)) '' | tr ' ' '.')]"
    fi
    local line
    line="$(printf '%s%s  %s/%s rows  %s rows/s  %s batches  %s' \
        "$bar" "${pct_txt:+ $pct_txt}" "$rows_done" "${rows_est:-?}" "$(printf '%.0f' "$rps")" "$batches" "$status")"
    if ((TTY)); then
        printf '\r%-110s' "$line"
    elif ((SECONDS - last_print >= 2)); then
        printf '%s\n' "$line"
        last_print=$SECONDS
    fi
}

PROGRESS_SQL="SELECT status, rows_done, rows_estimated, percent, rows_per_sec, batches_done, progress_bar
              FROM drip.progress WHERE run_id = $RUN"
while :; do
    row="$(sql -F'|' -c "$PROGRESS_SQL")"
    if [[ -n "$row" ]]; then
        IFS='|' read -r status rows_done rows_est percent rps batches bar <<<"$row"
        draw_progress "$status" "$rows_done" "$rows_est" "$percent" "$rps" "$batches" "$bar"
        case "$status" in
            completed | failed | stopped) break ;;
        esac
    fi
    if awk -v e="$(elapsed "$T0")" -v t="$TIMEOUT" 'BEGIN { exit !(e > t) }'; then
        ((TTY)) && printf '\n'
        drip_die "run $RUN still '${status:-not visible}' after $TIMEOUT s; giving up (log: $DEMO_DIR/postgres.log)"
    fi
    sleep 0.3
done
T1="$(now)"
if ((TTY)); then
    printf '\n'
else
    last_print=-100 # always log the final state
    draw_progress "$status" "$rows_done" "$rows_est" "$percent" "$rps" "$batches" "$bar"
fi

# The last events are committed with the final status; give psql a couple of
# its 0.2 s polls to print them before we close it.
sleep 1
stop_listener

# ---------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------
# psql prints: Asynchronous notification "drip_events" with payload "..." received from server process with PID n.
sed -nE 's/^Asynchronous notification "drip_events" with payload "(.*)" received from server process with PID [0-9]+\.$/\1/p' \
    "$EVENTS_RAW" >"$EVENTS"

event_name() { sed -nE 's/.*"event"[[:space:]]*:[[:space:]]*"([^"]*)".*/\1/p'; }

n_events="$(wc -l <"$EVENTS")"
n_batches="$(event_name <"$EVENTS" | grep -c '^batch_completed$' || true)"
# Show every run-level event, and about 10 of each per-batch (batch_*) kind:
# the first, the last and every Nth.
every=$(((n_batches + 9) / 10))
((every > 0)) || every=1

printf '\n======== events (%s received; all run events, every %sth of each batch_* event) ========\n' "$n_events" "$every"
awk -v every="$every" '
    function name_of(line,    n) {
        if (!match(line, /"event"[[:space:]]*:[[:space:]]*"[^"]*"/)) return "?"
        n = substr(line, RSTART, RLENGTH)
        sub(/^"event"[[:space:]]*:[[:space:]]*"/, "", n)
        sub(/"$/, "", n)
        return n
    }
    NR == FNR { total[name_of($0)]++; next }   # first pass: count per type
    {
        name = name_of($0)
        if (name ~ /^batch_/) {
            seen[name]++
            if (seen[name] != 1 && seen[name] != total[name] && seen[name] % every != 0) next
        }
        printf "%5d  %-16s %s\n", FNR, name, $0
    }' "$EVENTS" "$EVENTS"

printf '\nevents per type:\n'
event_name <"$EVENTS" | sort | uniq -c | awk '{ printf "  %-18s %6d\n", $2, $1 }'

# ---------------------------------------------------------------------------
# Summary and verification
# ---------------------------------------------------------------------------
IFS='|' read -r status rows_done batches <<<"$(sql -F'|' -c \
    "SELECT status, rows_done, batches_done FROM drip.progress WHERE run_id = $RUN")"
in_scope="$(sql -c "SELECT count(*) FROM users WHERE age = 30")"
remaining="$(sql -c "SELECT count(*) FROM users WHERE age = 30 AND email <> lower(email)")"
collateral="$(sql -c "SELECT count(*) FROM users WHERE age <> 30 AND email = lower(email)")"
secs="$(elapsed "$T0" "$T1")"
rate="$(awk -v r="${rows_done:-0}" -v s="$secs" 'BEGIN { printf "%.0f", (s > 0 ? r / s : 0) }')"

printf '\n======== summary ========\n'
printf '  run id             %s\n' "$RUN"
printf '  status             %s\n' "$status"
printf '  rows changed       %s (rows in scope: %s)\n' "${rows_done:-?}" "$in_scope"
printf '  left to fix        %s (age = 30 AND email <> lower(email))\n' "$remaining"
printf '  touched by mistake %s (age <> 30 AND email = lower(email))\n' "$collateral"
printf '  batches            %s\n' "${batches:-?}"
printf '  elapsed            %s s\n' "$secs"
printf '  throughput         %s rows/s\n' "$rate"
printf '  events received    %s\n' "$n_events"
event_name <"$EVENTS" | sort | uniq -c | awk '{ printf "    %-18s %6d\n", $2, $1 }'
printf '  cluster            %s (stopped at exit; restart with: %s)\n' "$DEMO_DIR" \
    "$(if is_root; then printf 'sudo -u postgres '; fi)$PG_BIN/pg_ctl -D $DRIP_PGDATA -l $DEMO_DIR/postgres.log start"

problems=()
[[ "$status" == completed ]] || problems+=("run status is '$status', not completed")
[[ "$remaining" == 0 ]] || problems+=("$remaining in-scope rows still have upper-case emails")
[[ "$collateral" == 0 ]] || problems+=("$collateral out-of-scope rows were changed")
# (grep -c, not grep -q: with pipefail an early-exiting grep -q can fail the pipe)
n_completed="$(event_name <"$EVENTS" | grep -cx 'run_completed' || true)"
((n_completed > 0)) || problems+=("no run_completed event received")

if ((${#problems[@]})); then
    printf '\nDEMO FAILED:\n' >&2
    printf '  - %s\n' "${problems[@]}" >&2
    exit 1
fi
printf '\nDEMO OK\n'
